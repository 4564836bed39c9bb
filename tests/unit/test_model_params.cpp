// The parameter registry of a whole model (MODEL.md §7): a config with dense, MoE and Engram layers
// registers exactly the expected names, with their shapes, optimizer groups and inits (MODEL.md §5,
// §6), written out here from the config; tie_embeddings drops output.weight; the model is
// initialized from cfg.seed(); the compression table is validated and sets V'; the backward pass
// reports gradients final (GradientsFinal) only after their last write.
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "model/model.h"
#include "tests/test_util.h"
#include "runtime/init.h"

namespace engram {
namespace {

ModelConfig test_config(bool tie) {
  ModelConfig cfg;
  cfg.set_vocab_size(37);
  cfg.set_d_model(8);
  cfg.set_n_heads(2);
  cfg.set_n_layers(4);
  cfg.set_n_dense_layers(2);
  cfg.set_d_ff(12);
  cfg.set_init_std(0.05f);
  cfg.set_seed(9);
  cfg.set_tie_embeddings(tie);
  auto* moe = cfg.mutable_moe();
  moe->set_n_routed_experts(3);
  moe->set_top_k(2);
  moe->set_expert_d_ff(5);
  moe->set_n_shared_experts(2);
  auto* engram = cfg.mutable_engram();
  engram->add_layers(1);
  engram->add_layers(3);
  engram->set_max_ngram(3);
  engram->set_heads_per_ngram(2);
  engram->set_head_dim(4);
  engram->add_table_size(11);
  engram->add_table_size(13);
  engram->set_table_init_std(0.07f);
  return cfg;
}

using testing_util::naive_is_prime;

// Table rows of every Engram layer by the prime rule of MODEL.md §4.2, walked naively.
std::vector<int64_t> naive_table_rows(const config::EngramConfig& g) {
  std::set<int64_t> used;
  std::vector<int64_t> rows;
  for (int i = 0; i < g.layers_size(); ++i) {
    int64_t total = 0;
    for (int n = 2; n <= g.max_ngram(); ++n) {
      int64_t start = g.table_size(n - 2) - 1;
      for (int j = 0; j < g.heads_per_ngram(); ++j) {
        int64_t p = start + 1;
        while (!naive_is_prime(p) || used.count(p)) ++p;
        used.insert(p);
        total += p;
        start = p;
      }
    }
    rows.push_back(total);
  }
  return rows;
}

struct Expected {
  Shape shape;
  OptimGroup group;
  InitKind init;
  double std = 0.0;
};

std::map<std::string, Expected> expected_parameters(const ModelConfig& c) {
  const int64_t v = c.vocab_size(), d = c.d_model(), f = c.d_ff();
  const double std = c.init_std(), out_std = c.init_std() / std::sqrt(2.0 * c.n_layers());
  const auto& moe = c.moe();
  const int64_t e = moe.n_routed_experts(), fe = moe.expert_d_ff(), shared = moe.n_shared_experts() * fe;
  const auto& g = c.engram();
  const int64_t d_mem = int64_t{g.max_ngram() - 1} * g.heads_per_ngram() * g.head_dim();
  const std::vector<int64_t> table_rows = naive_table_rows(g);

  std::map<std::string, Expected> x;
  x["tok_embeddings.weight"] = {{v, d}, OptimGroup::Decay, InitKind::Normal, std};
  x["norm.weight"] = {{d}, OptimGroup::NoDecay, InitKind::Ones};
  if (!c.tie_embeddings()) x["output.weight"] = {{v, d}, OptimGroup::Decay, InitKind::Normal, std};
  int engram_index = 0;
  for (int l = 0; l < c.n_layers(); ++l) {
    const std::string p = "layers." + std::to_string(l) + ".";
    x[p + "attn_norm.weight"] = {{d}, OptimGroup::NoDecay, InitKind::Ones};
    x[p + "ffn_norm.weight"] = {{d}, OptimGroup::NoDecay, InitKind::Ones};
    for (const char* w : {"wq", "wk", "wv"})
      x[p + "attn." + w + ".weight"] = {{d, d}, OptimGroup::Decay, InitKind::Normal, std};
    x[p + "attn.wo.weight"] = {{d, d}, OptimGroup::Decay, InitKind::Normal, out_std};
    if (l < c.n_dense_layers()) {
      x[p + "mlp.w1.weight"] = {{f, d}, OptimGroup::Decay, InitKind::Normal, std};
      x[p + "mlp.w3.weight"] = {{f, d}, OptimGroup::Decay, InitKind::Normal, std};
      x[p + "mlp.w2.weight"] = {{d, f}, OptimGroup::Decay, InitKind::Normal, out_std};
    } else {
      x[p + "moe.router.weight"] = {{e, d}, OptimGroup::Decay, InitKind::Normal, std};
      x[p + "moe.router.bias"] = {{e}, OptimGroup::NotTrained, InitKind::Zeros};
      x[p + "moe.experts.w1"] = {{e, fe, d}, OptimGroup::Decay, InitKind::Normal, std};
      x[p + "moe.experts.w3"] = {{e, fe, d}, OptimGroup::Decay, InitKind::Normal, std};
      x[p + "moe.experts.w2"] = {{e, d, fe}, OptimGroup::Decay, InitKind::Normal, out_std};
      x[p + "moe.shared.w1.weight"] = {{shared, d}, OptimGroup::Decay, InitKind::Normal, std};
      x[p + "moe.shared.w3.weight"] = {{shared, d}, OptimGroup::Decay, InitKind::Normal, std};
      x[p + "moe.shared.w2.weight"] = {{d, shared}, OptimGroup::Decay, InitKind::Normal, out_std};
    }
    if (engram_index < g.layers_size() && g.layers(engram_index) == l) {
      x[p + "engram.table"] = {{table_rows[engram_index], g.head_dim()},
                               OptimGroup::SparseTable,
                               InitKind::Normal,
                               g.table_init_std()};
      for (const char* w : {"wk", "wv"}) {
        x[p + "engram." + w + ".weight"] = {{d, d_mem}, OptimGroup::Decay, InitKind::Normal, std};
        x[p + "engram." + w + ".bias"] = {{d}, OptimGroup::NoDecay, InitKind::Zeros};
      }
      for (const char* n : {"q_norm", "k_norm", "conv_norm"})
        x[p + "engram." + n + ".weight"] = {{d}, OptimGroup::NoDecay, InitKind::Ones};
      x[p + "engram.conv.weight"] = {{g.conv_kernel(), d}, OptimGroup::NoDecay, InitKind::Zeros};
      ++engram_index;
    }
  }
  return x;
}

TEST(ModelParams, NaivePrimeWalkMatchesTheWorkedRule) {
  // Layer 1, n = 2: 11, 13; n = 3 (start 12): 17, 19. Layer 3 skips all of those: 23, 29, 31, 37.
  EXPECT_EQ(naive_table_rows(test_config(false).engram()),
            (std::vector<int64_t>{11 + 13 + 17 + 19, 23 + 29 + 31 + 37}));
}

void check_registry(bool tie) {
  const ModelConfig cfg = test_config(tie);
  Model model(cfg);
  const ParameterRegistry& params = model.params();
  const std::map<std::string, Expected> expected = expected_parameters(cfg);

  std::set<std::string> seen;
  for (const Parameter* p : params.all()) {
    seen.insert(p->name);
    auto it = expected.find(p->name);
    if (it == expected.end()) {
      ADD_FAILURE() << "unexpected parameter " << p->name;
      continue;
    }
    const Expected& e = it->second;
    EXPECT_EQ(p->global_shape, e.shape) << p->name;
    EXPECT_EQ(p->value.shape(), e.shape) << p->name;
    EXPECT_EQ(p->group, e.group) << p->name << ": " << optim_group_name(p->group);
    EXPECT_EQ(p->init.kind, e.init) << p->name;
    if (e.init == InitKind::Normal) {
      EXPECT_NEAR(p->init.std, e.std, 1e-7) << p->name;
    }
    const bool dense_grad = e.group == OptimGroup::Decay || e.group == OptimGroup::NoDecay;
    EXPECT_EQ(p->grad.defined(), dense_grad) << p->name;
  }
  for (const auto& [name, e] : expected) EXPECT_TRUE(seen.count(name)) << "missing parameter " << name;
  EXPECT_EQ(params.all().size(), expected.size());

  // Model order: embeddings first, then the layers, the final norm and the head.
  EXPECT_EQ(params.all().front()->name, "tok_embeddings.weight");
  EXPECT_EQ(params.all().back()->name, tie ? "norm.weight" : "output.weight");
}

TEST(ModelParams, UntiedRegistryMatchesModelMd) { check_registry(false); }
TEST(ModelParams, TiedEmbeddingsDropTheOutputWeight) { check_registry(true); }

TEST(ModelParams, InitializedFromTheConfigSeed) {
  const ModelConfig cfg = test_config(false);
  Model model(cfg);
  for (const Parameter* p : model.params().all()) {
    Tensor expected = Tensor::empty(p->value.shape());
    init_parameter(expected, cfg.seed(), p->name, p->init);
    EXPECT_EQ(p->value.to_vector<float>(), expected.to_vector<float>()) << p->name;
  }
  EXPECT_NE(model.params().get("tok_embeddings.weight").value.to_vector<float>(),
            std::vector<float>(37 * 8, 0.0f));
}

TEST(ModelParams, EngramHashingFollowsTheConfig) {
  Model model(test_config(false));
  const auto& hashing = model.engram_hashing();
  ASSERT_EQ(hashing.size(), 2u);
  EXPECT_EQ(hashing[0].layer, 1);
  EXPECT_EQ(hashing[1].layer, 3);
  const std::vector<int64_t> rows = naive_table_rows(test_config(false).engram());
  EXPECT_EQ(hashing[0].rows, rows[0]);
  EXPECT_EQ(hashing[1].rows, rows[1]);
  EXPECT_EQ(model.moe_layers().size(), 2u);  // layers 2 and 3
}

TEST(ModelParams, CompressionTableSetsTheCompressedVocabulary) {
  const ModelConfig cfg = test_config(false);
  EXPECT_EQ(Model(cfg).vocab_compressed(), 37);  // identity
  std::vector<int32_t> compress(37);
  for (int i = 0; i < 37; ++i) compress[i] = i % 5;
  EXPECT_EQ(Model(cfg, compress).vocab_compressed(), 5);
}

TEST(ModelParams, BadCompressionTablesAreRejected) {
  const ModelConfig cfg = test_config(false);
  auto message = [&](std::vector<int32_t> compress) {
    try {
      Model model(cfg, std::move(compress));
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(message(std::vector<int32_t>(36, 0)).find("36 entries but model.vocab_size = 37"),
            std::string::npos)
      << message(std::vector<int32_t>(36, 0));
  std::vector<int32_t> negative(37, 1);
  negative[4] = -1;
  EXPECT_NE(message(negative).find("raw id 4 to -1"), std::string::npos) << message(negative);
  std::vector<int32_t> too_large(37, 1);
  too_large[36] = 37;
  EXPECT_NE(message(too_large).find("raw id 36 to 37"), std::string::npos) << message(too_large);
  std::vector<int32_t> gap(37, 0);
  gap[5] = 2;  // uses 0 and 2 but not 1
  EXPECT_NE(message(gap).find("not dense: no raw id maps to 1"), std::string::npos) << message(gap);
}

// Model::forward_backward's GradientsFinal reports (what the gradient buckets start their sums from):
// a strictly descending sequence of registration indices ending with 0, each coming only once the
// gradients it declares final hold their final value. Every gradient is copied the moment a report
// first covers it, and the copies must equal the gradients after the backward pass, bit for bit (a
// report that came too early would miss a later addition), on a second micro-batch that accumulates
// onto the first. Engram tables count their row gradient entries instead (one per backward pass).
void check_gradients_final_reports(bool tie) {
  Model model(test_config(tie));
  std::mt19937 rng(3);
  const LossWeights w{1.0f / 20.0f, 0.5f};
  model.params().zero_grads();
  model.forward_backward(testing_util::random_batch<Batch>(2, 5, 37, rng), w);

  const std::vector<Parameter*>& params = model.params().all();
  const Tensor embeddings_before = params[0]->grad.clone();
  std::vector<Tensor> at_report(params.size());
  std::vector<size_t> row_grads_at_report(params.size(), 0);
  std::vector<bool> covered(params.size(), false);
  std::vector<size_t> reports;
  model.forward_backward(testing_util::random_batch<Batch>(2, 5, 37, rng), w, [&](size_t first_final) {
    reports.push_back(first_final);
    for (size_t i = first_final; i < params.size(); ++i) {
      if (covered[i]) continue;
      covered[i] = true;
      if (params[i]->grad.defined()) at_report[i] = params[i]->grad.clone();
      row_grads_at_report[i] = params[i]->row_grads.size();
    }
  });

  ASSERT_FALSE(reports.empty());
  EXPECT_EQ(reports.back(), 0u);
  for (size_t r = 1; r < reports.size(); ++r) EXPECT_LT(reports[r], reports[r - 1]) << "report " << r;
  // The head, each block, then the embeddings: one report each.
  EXPECT_EQ(reports.size(), 1 + 4 + 1u);
  for (size_t i = 0; i < params.size(); ++i) {
    const Parameter& p = *params[i];
    ASSERT_TRUE(covered[i]) << p.name;
    if (p.grad.defined()) {
      EXPECT_TRUE(testing_util::bitwise_equal(at_report[i], p.grad)) << p.name << " changed after its report";
    }
    EXPECT_EQ(row_grads_at_report[i], p.row_grads.size()) << p.name;
  }
  // Not vacuous: this pass added to the gradients (the embeddings', written last, by the lookup's
  // backward and, when tied, by the head's).
  EXPECT_FALSE(testing_util::bitwise_equal(embeddings_before, params[0]->grad));
}

TEST(ModelParams, GradientsAreReportedFinalOnlyAfterTheirLastWriteUntied) { check_gradients_final_reports(false); }
TEST(ModelParams, GradientsAreReportedFinalOnlyAfterTheirLastWriteTied) { check_gradients_final_reports(true); }

TEST(ModelParams, InvalidConfigIsRejected) {
  ModelConfig cfg = test_config(false);
  cfg.set_n_heads(3);  // 8 is not divisible by 3
  EXPECT_THROW(Model model(cfg), Error);
}

}  // namespace
}  // namespace engram
