#include "model/engram.h"

#include "kernels/conv.h"
#include "kernels/elementwise.h"
#include "kernels/embedding.h"
#include "kernels/engram_gate.h"
#include "kernels/gemm.h"
#include "kernels/matmul_precision.h"
#include "kernels/ngram_hash.h"
#include "parallel/process_groups.h"
#include "parallel/sharded_table.h"

namespace engram {

namespace {

constexpr float kConvNormEps = 1e-5f;  // MODEL.md §4.3: fixed, not norm_eps

std::string engram_name(int layer, const std::string& leaf) {
  return "layers." + std::to_string(layer) + ".engram." + leaf;
}

int64_t heads_total(const config::EngramConfig& g) { return int64_t{g.max_ngram() - 1} * g.heads_per_ngram(); }
int64_t memory_dim(const config::EngramConfig& g) { return heads_total(g) * g.head_dim(); }

// Mean of a float tensor on any device, summed on the host in double (a [B·T] vector per step).
double mean_on_host(const Tensor& t) {
  double sum = 0.0;
  for (float v : t.to_vector<float>()) sum += v;
  return t.numel() > 0 ? sum / static_cast<double>(t.numel()) : 0.0;
}

// The layer's table: whole, or this rank's row range of the table group.
Parameter& add_table(ParameterRegistry& params, const std::string& name, const Shape& shape,
                     const InitSpec& init, const ProcessGroups* groups) {
  if (!groups) return params.add(name, shape, OptimGroup::SparseTable, init, ShardKind::Rows);
  const IndexRange owned = groups->layout().table_rows(shape[0]);
  return params.add(name, shape, OptimGroup::SparseTable, init, ShardKind::Rows, owned.begin, owned.size());
}

}  // namespace

std::vector<EngramLayerHash> make_engram_hashing(const ModelConfig& cfg, int64_t vocab_compressed) {
  const auto& g = cfg.engram();
  const std::vector<int64_t> table_size(g.table_size().begin(), g.table_size().end());
  const std::vector<std::vector<int64_t>> primes =
      kernels::engram_primes(g.layers_size(), g.max_ngram(), g.heads_per_ngram(), table_size);
  std::vector<EngramLayerHash> plans;
  for (int i = 0; i < g.layers_size(); ++i) {
    EngramLayerHash h;
    h.layer = g.layers(i);
    h.multipliers = kernels::engram_multipliers(g.seed(), h.layer, vocab_compressed, g.max_ngram());
    h.primes = primes[i];
    h.offsets = kernels::prefix_offsets(h.primes);
    for (int64_t p : h.primes) h.rows += p;
    plans.push_back(std::move(h));
  }
  return plans;
}

struct EngramModule::Saved {
  Shape h_shape;    // [B, T, D]
  Tensor rows;      // i64 [B, T, H_tot]: global table rows of every head
  Tensor e;         // [N, d_mem] gathered memory (N = B·T), as products take it (kernels::matmul_operand)
  Tensor wk, wv;    // [D, d_mem] projection weights as products take them (rounded once per forward)
  TableRouting routing;  // exchange plan of the sharded lookup
  Tensor qn, kn, v; // [N, D]
  Tensor score, alpha;  // [N]
  Tensor u;         // [N, D] gated value
  Tensor r, c;      // [B, T, D] conv input (normed u) and conv output
};

// A started lookup: the table rows of every head, and the gathered memory or the pending exchange.
struct EngramModule::Lookup {
  Tensor ids_c;  // the ids it was started for (the same tensor must reach forward)
  Tensor rows;   // i64 [B, T, H_tot]
  Tensor e;      // [N, d_mem], gathered (whole table) into the dtype products take
  std::unique_ptr<PendingLookup> sharded;  // in flight (sharded table)
};

EngramModule::EngramModule(const ModelConfig& cfg, const EngramLayerHash& hash, int64_t pad_compressed,
                           ParameterRegistry& params, ProcessGroups* groups)
    : cfg_(cfg),
      hash_(hash),
      pad_c_(pad_compressed),
      multipliers_(Tensor::from_vector(std::vector<int64_t>(hash.multipliers.begin(), hash.multipliers.end()))),
      primes_(Tensor::from_vector(hash.primes)),
      offsets_(Tensor::from_vector(hash.offsets)),
      table_(add_table(params, engram_name(hash.layer, "table"), {hash.rows, cfg.engram().head_dim()},
                       {InitKind::Normal, cfg.engram().table_init_std()}, groups)),
      wk_(params.add(engram_name(hash.layer, "wk.weight"), {cfg.d_model(), memory_dim(cfg.engram())},
                     OptimGroup::Decay, {InitKind::Normal, cfg.init_std()})),
      wv_(params.add(engram_name(hash.layer, "wv.weight"), {cfg.d_model(), memory_dim(cfg.engram())},
                     OptimGroup::Decay, {InitKind::Normal, cfg.init_std()})),
      bk_(params.add(engram_name(hash.layer, "wk.bias"), {cfg.d_model()}, OptimGroup::NoDecay, {InitKind::Zeros})),
      bv_(params.add(engram_name(hash.layer, "wv.bias"), {cfg.d_model()}, OptimGroup::NoDecay, {InitKind::Zeros})),
      q_norm_(params, engram_name(hash.layer, "q_norm.weight"), cfg.d_model(), cfg.norm_eps()),
      k_norm_(params, engram_name(hash.layer, "k_norm.weight"), cfg.d_model(), cfg.norm_eps()),
      conv_norm_(params, engram_name(hash.layer, "conv_norm.weight"), cfg.d_model(), kConvNormEps),
      conv_(params.add(engram_name(hash.layer, "conv.weight"), {cfg.engram().conv_kernel(), cfg.d_model()},
                       OptimGroup::NoDecay, {InitKind::Zeros})) {
  const auto& g = cfg.engram();
  EG_ASSERT(static_cast<int64_t>(hash.multipliers.size()) == g.max_ngram() &&
                static_cast<int64_t>(hash.primes.size()) == heads_total(g) &&
                hash.offsets.size() == hash.primes.size(),
            "Engram hash plan of layer ", hash.layer, " does not match the config");
  if (groups) sharded_ = std::make_unique<ShardedTable>(groups->table(), hash.rows, g.head_dim());
}

EngramModule::~EngramModule() = default;

void EngramModule::start_lookup(const Tensor& ids_c) {
  const auto& g = cfg_.engram();
  check_dtype(ids_c, DType::I32, "Engram lookup ids_c");
  EG_ASSERT(ids_c.ndim() == 2, "Engram lookup: ids_c must be [B, T], got ", ids_c.describe());
  const Device dev = ids_c.device();
  auto lookup = std::make_unique<Lookup>();
  lookup->ids_c = ids_c;
  // The gather order (n ascending, j ascending per token) is exactly the concat of e_t.
  lookup->rows = Tensor::empty({ids_c.dim(0), ids_c.dim(1), heads_total(g)}, DType::I64, dev);
  multipliers_ = multipliers_.to(dev);  // the module is built on the host
  primes_ = primes_.to(dev);
  offsets_ = offsets_.to(dev);
  kernels::ngram_hash(ids_c, pad_c_, multipliers_, primes_, offsets_, g.max_ngram(), g.heads_per_ngram(),
                      lookup->rows);
  if (sharded_) {
    lookup->sharded = std::make_unique<PendingLookup>(sharded_->start_lookup(table_.value, lookup->rows));
  } else {
    lookup->e = Tensor::empty({ids_c.numel(), memory_dim(g)}, kernels::matmul_operand_dtype(dev), dev);
    kernels::embedding_gather(table_.value, lookup->rows, lookup->e);  // whole table: global rows are local rows
  }
  lookup_ = std::move(lookup);
}

Tensor EngramModule::forward(const Tensor& h, const Tensor& ids_c) {
  const auto& g = cfg_.engram();
  EG_ASSERT(h.ndim() == 3 && h.dim(2) == cfg_.d_model(), "Engram forward: h must be [B, T, D], got ",
            h.describe());
  check_shape(ids_c, {h.dim(0), h.dim(1)}, "Engram forward ids_c");
  const int64_t n = h.dim(0) * h.dim(1), d = cfg_.d_model();
  const Device dev = h.device();
  auto s = std::make_shared<Saved>();
  s->h_shape = h.shape();

  if (!lookup_) start_lookup(ids_c);
  const std::unique_ptr<Lookup> lookup = std::move(lookup_);
  EG_ASSERT(lookup->ids_c.raw() == ids_c.raw() && lookup->ids_c.shape() == ids_c.shape(),
            "Engram forward: the started lookup was for other ids");
  s->rows = lookup->rows;
  if (sharded_) {
    // Expanded straight into the dtype the products take (no f32 copy to round).
    s->e = Tensor::empty({n, memory_dim(g)}, kernels::matmul_operand_dtype(dev), dev);
    s->routing = sharded_->finish_lookup(std::move(*lookup->sharded), s->e);
  } else {
    s->e = lookup->e;
  }

  s->wk = kernels::matmul_operand(wk_.value);
  s->wv = kernels::matmul_operand(wv_.value);
  Tensor k = Tensor::empty({n, d}, DType::F32, dev);
  s->v = Tensor::empty({n, d}, DType::F32, dev);
  kernels::gemm(s->e, false, s->wk, true, k);
  kernels::add_bias_rows(k, bk_.value);
  kernels::gemm(s->e, false, s->wv, true, s->v);
  kernels::add_bias_rows(s->v, bv_.value);

  // Gate.
  s->qn = q_norm_.forward(h.view({n, d}));
  s->kn = k_norm_.forward(k);
  s->score = Tensor::empty({n}, DType::F32, dev);
  s->alpha = Tensor::empty({n}, DType::F32, dev);
  s->u = Tensor::empty({n, d}, DType::F32, dev);
  kernels::engram_gate_forward(s->qn, s->kn, s->v, s->score, s->alpha, s->u);

  // Short causal conv: y = u + SiLU(conv(RMSNorm(u))).
  s->r = conv_norm_.forward(s->u).view(h.shape());
  s->c = Tensor::empty(h.shape(), DType::F32, dev);
  kernels::causal_conv_forward(s->r, conv_.value, g.max_ngram(), s->c);
  Tensor y = Tensor::empty(h.shape(), DType::F32, dev);
  kernels::silu_forward(s->c, y);
  kernels::add_(y, s->u);
  saved_ = std::move(s);
  return y;
}

double EngramModule::last_gate_mean() const {
  EG_ASSERT(saved_ != nullptr, "EngramModule::last_gate_mean before any forward");
  return mean_on_host(saved_->alpha);
}

const Tensor& EngramModule::last_scores() const {
  EG_ASSERT(saved_ != nullptr, "EngramModule::last_scores before any forward");
  return saved_->score;
}

Tensor EngramModule::backward(const Tensor& dy, const Tensor& dh_residual) {
  EG_ASSERT(saved_ != nullptr, "EngramModule::backward without forward");
  const Saved& s = *saved_;
  const auto& g = cfg_.engram();
  check_shape(dy, s.h_shape, "Engram backward dy");
  if (dh_residual.defined()) check_shape(dh_residual, s.h_shape, "Engram backward dh_residual");
  const int64_t n = s.u.rows(), d = cfg_.d_model();
  const Device dev = dy.device();

  // y = u + SiLU(c): u gets dy directly and through the conv path.
  Tensor dc = Tensor::empty(s.h_shape, DType::F32, dev);
  kernels::silu_backward(dy, s.c, dc);
  Tensor dr = Tensor::empty(s.h_shape, DType::F32, dev);
  kernels::causal_conv_backward(dc, s.r, conv_.value, g.max_ngram(), dr, conv_.grad);
  const Tensor du = conv_norm_.backward(dr.view({n, d}), /*dx_residual=*/dy.view({n, d}));

  Tensor dqn = Tensor::empty({n, d}, DType::F32, dev);
  Tensor dkn = Tensor::empty({n, d}, DType::F32, dev);
  Tensor dv_f32 = Tensor::empty({n, d}, DType::F32, dev);
  kernels::engram_gate_backward(du, s.qn, s.kn, s.v, s.score, s.alpha, dqn, dkn, dv_f32);
  const Tensor residual_rows = dh_residual.defined() ? dh_residual.view({n, d}) : Tensor();
  Tensor dh = q_norm_.backward(dqn, residual_rows).view(s.h_shape);
  const Tensor dk_f32 = k_norm_.backward(dkn);

  // Projections.
  kernels::bias_grad(dk_f32, bk_.grad);
  kernels::bias_grad(dv_f32, bv_.grad);
  const Tensor dk = kernels::matmul_operand(dk_f32), dv = kernels::matmul_operand(dv_f32);
  kernels::gemm(dk, true, s.e, false, wk_.grad, 1.0f, 1.0f);
  kernels::gemm(dv, true, s.e, false, wv_.grad, 1.0f, 1.0f);
  Tensor de = Tensor::empty(s.e.shape(), DType::F32, dev);
  kernels::gemm(dk, false, s.wk, false, de);
  kernels::gemm(dv, false, s.wv, false, de, 1.0f, 1.0f);

  // Table: one summed gradient per distinct row touched, in local rows of the rows this rank holds
  // (sharded: the owners receive every rank's sums).
  table_.row_grads.push_back(sharded_ ? sharded_->backward(s.routing, de)
                                      : kernels::reduce_rows(de.view({s.rows.numel(), g.head_dim()}),
                                                             s.rows));
  return dh;
}

}  // namespace engram
