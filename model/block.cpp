#include "model/block.h"

#include <cmath>
#include <string>

#include "kernels/elementwise.h"
#include "kernels/matmul_precision.h"
#include "runtime/trace_range.h"

namespace engram {

namespace {

// h + branch as a new tensor: modules keep handles to their inputs for backward, so the residual
// stream is never updated in place. One pass (read both, write the sum), not a copy then an add.
// (The attention and the FFN take their residual instead: their last product adds it as it writes.)
Tensor residual_add(const Tensor& h, const Tensor& branch) {
  Tensor sum = Tensor::empty(h.shape(), DType::F32, h.device());
  kernels::add(h, branch, sum);
  return sum;
}

std::string layer_prefix(int layer) { return "layers." + std::to_string(layer); }

}  // namespace

Block::RangeNames Block::range_names(int layer, bool dense) {
  const std::string p = layer_prefix(layer), ffn = dense ? ".mlp" : ".moe";
  return {p + ".engram forward", p + ".attn forward",     p + ffn + " forward",
          p + ffn + " backward", p + ".attn backward", p + ".engram backward"};
}

Block::Block(const ModelConfig& cfg, int layer, const EngramLayerHash* engram_hash, int64_t pad_compressed,
             ParameterRegistry& params, ProcessGroups* groups)
    : ranges_(range_names(layer, layer < cfg.n_dense_layers())),
      engram_(engram_hash ? std::make_unique<EngramModule>(cfg, *engram_hash, pad_compressed, params, groups)
                          : nullptr),
      attn_norm_(params, layer_prefix(layer) + ".attn_norm.weight", cfg.d_model(), cfg.norm_eps()),
      attn_(cfg, layer, params),
      ffn_norm_(params, layer_prefix(layer) + ".ffn_norm.weight", cfg.d_model(), cfg.norm_eps()) {
  if (layer < cfg.n_dense_layers()) {
    mlp_ = std::make_unique<SwiGluMlp>(params, layer_prefix(layer) + ".mlp", cfg.d_model(), cfg.d_ff(),
                                       cfg.init_std(), cfg.init_std() / std::sqrt(2.0 * cfg.n_layers()));
  } else {
    moe_ = std::make_unique<MoELayer>(cfg, layer, params, groups);
  }
}

Tensor Block::forward(const Tensor& h, const Tensor& ids_c, const LossWeights& w) {
  Tensor h_in = h;
  if (engram_) {
    const TraceRange range(ranges_.engram_forward.c_str());
    h_in = residual_add(h, engram_->forward(h, ids_c));
  }
  // Only products read the attention's normed input and the dense MLP's: the norms write them in the
  // dtype the products take (no f32 copy to round). The MoE's router multiplies its input in float32.
  const DType operand_dtype = kernels::matmul_operand_dtype(h.device());
  Tensor h_mid;
  {
    const TraceRange range(ranges_.attn_forward.c_str());
    h_mid = attn_.forward(attn_norm_.forward(h_in, operand_dtype), /*residual=*/h_in);
  }
  const TraceRange range(ranges_.ffn_forward.c_str());
  // The FFN works on token rows [B·T, D].
  const Shape rows{h.rows(), h.cols()};
  const Tensor ffn_in = ffn_norm_.forward(h_mid, moe_ ? DType::F32 : operand_dtype).view(rows);
  const Tensor h_mid_rows = h_mid.view(rows);
  const Tensor h_out =
      mlp_ ? mlp_->forward(ffn_in, /*residual=*/h_mid_rows) : moe_->forward(ffn_in, w, /*residual=*/h_mid_rows);
  return h_out.view(h.shape());
}

Tensor Block::backward(const Tensor& dh) {
  // Each residual gradient flows both through its branch and straight past it; the norms (and the
  // Engram module) add the part that goes past as they write their input gradient.
  Tensor dh_mid;
  {
    const TraceRange range(ranges_.ffn_backward.c_str());
    const Tensor d_rows = dh.view({dh.rows(), dh.cols()});
    const Tensor d_ffn_in = mlp_ ? mlp_->backward(d_rows) : moe_->backward(d_rows);
    dh_mid = ffn_norm_.backward(d_ffn_in.view(dh.shape()), /*dx_residual=*/dh);
  }
  Tensor dh_in;
  {
    const TraceRange range(ranges_.attn_backward.c_str());
    dh_in = attn_norm_.backward(attn_.backward(dh_mid), /*dx_residual=*/dh_mid);
  }
  if (!engram_) return dh_in;

  const TraceRange range(ranges_.engram_backward.c_str());
  return engram_->backward(dh_in, /*dh_residual=*/dh_in);
}

}  // namespace engram
