#include "runtime/init.h"

#include "runtime/rng.h"

namespace engram {

void init_parameter(Tensor& out, uint64_t seed, const std::string& name, const InitSpec& spec,
                    int64_t flat_offset) {
  check_dtype(out, DType::F32, name.c_str());
  EG_ASSERT(out.is_cpu(), "init_parameter runs on the host");
  float* p = out.data<float>();
  const int64_t n = out.numel();
  switch (spec.kind) {
    case InitKind::Zeros:
      for (int64_t i = 0; i < n; ++i) p[i] = 0.0f;
      break;
    case InitKind::Ones:
      for (int64_t i = 0; i < n; ++i) p[i] = 1.0f;
      break;
    case InitKind::Normal: {
      const uint64_t key = stream_key(seed, name);
      for (int64_t i = 0; i < n; ++i)
        p[i] = static_cast<float>(spec.std * normal_at(key, static_cast<uint64_t>(flat_offset + i)));
      break;
    }
  }
}

}  // namespace engram
