#include "optim/bias_update.h"

namespace engram {

void update_balancing_bias(Tensor& bias, const std::vector<int64_t>& load, float rate) {
  check_dtype(bias, DType::F32, "balancing bias");
  EG_ASSERT(bias.numel() == static_cast<int64_t>(load.size()), "balancing bias ", bias.describe(), " for ",
            load.size(), " expert loads");
  if (rate == 0.0f || load.empty()) return;
  double total = 0.0;
  for (int64_t l : load) total += static_cast<double>(l);
  const double mean = total / static_cast<double>(load.size());
  // E floats: update a host copy when the bias lives on a device.
  Tensor host = bias.to(Device::CPU);
  float* b = host.data<float>();
  for (size_t i = 0; i < load.size(); ++i) {
    const double below_mean = mean - static_cast<double>(load[i]);
    if (below_mean > 0.0) b[i] += rate;
    if (below_mean < 0.0) b[i] -= rate;
  }
  if (!bias.is_cpu()) bias.copy_from(host);
}

}  // namespace engram
