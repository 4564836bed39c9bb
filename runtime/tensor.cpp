#include "runtime/tensor.h"

#include <cstring>
#include <sstream>

#include "runtime/allocator.h"
#ifdef ENGRAM_HAVE_CUDA
#include "runtime/cuda/device.h"
#endif

namespace engram {

size_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::F32: return 4;
    case DType::BF16: return 2;
    case DType::I32: return 4;
    case DType::I64: return 8;
  }
  return 0;
}

const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::F32: return "f32";
    case DType::BF16: return "bf16";
    case DType::I32: return "i32";
    case DType::I64: return "i64";
  }
  return "?";
}

const char* device_name(Device device) { return device == Device::CPU ? "cpu" : "cuda"; }

std::string shape_str(const Shape& shape) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < shape.size(); ++i) os << (i ? ", " : "") << shape[i];
  os << "]";
  return os.str();
}

int64_t shape_numel(const Shape& shape) {
  int64_t n = 1;
  for (int64_t d : shape) {
    EG_ASSERT(d >= 0, "negative dimension in ", shape_str(shape));
    n *= d;
  }
  return n;
}

Storage::Storage(size_t bytes, Device device) : bytes_(bytes), device_(device) {
#ifdef ENGRAM_HAVE_CUDA
  data_ = device == Device::CPU ? host_allocate(bytes) : device_allocate(bytes);
#else
  EG_CHECK(device == Device::CPU, "this build has no CUDA backend; cannot allocate on cuda");
  data_ = host_allocate(bytes);
#endif
}

Storage::~Storage() {
#ifdef ENGRAM_HAVE_CUDA
  if (device_ == Device::CUDA) {
    device_release(data_, bytes_);
    return;
  }
#endif
  host_release(data_, bytes_);
}

Tensor Tensor::empty(const Shape& shape, DType dtype, Device device) {
  Tensor t;
  t.numel_ = shape_numel(shape);
  t.shape_ = shape;
  t.dtype_ = dtype;
  t.device_ = device;
  t.storage_ = std::make_shared<Storage>(t.nbytes(), device);
  return t;
}

Tensor Tensor::zeros(const Shape& shape, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, device);
  t.zero_();
  return t;
}

Tensor Tensor::full(const Shape& shape, float value, Device device) {
  EG_CHECK(device == Device::CPU, "Tensor::full is host-only");
  Tensor t = empty(shape, DType::F32, device);
  float* p = t.data<float>();
  for (int64_t i = 0; i < t.numel_; ++i) p[i] = value;
  return t;
}

int64_t Tensor::dim(int i) const {
  int n = ndim();
  int j = i < 0 ? i + n : i;
  EG_ASSERT(j >= 0 && j < n, "dim ", i, " out of range for shape ", shape_str(shape_));
  return shape_[j];
}

int64_t Tensor::rows() const {
  int64_t r = 1;
  for (int i = 0; i + 1 < ndim(); ++i) r *= shape_[i];
  return r;
}

void* Tensor::raw() const {
  EG_ASSERT(defined(), "access to an undefined tensor");
  return static_cast<char*>(storage_->data()) + offset_bytes_;
}

Tensor Tensor::view(const Shape& shape) const {
  Shape s = shape;
  int infer = -1;
  int64_t known = 1;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == -1) {
      EG_ASSERT(infer < 0, "view with two -1 dimensions");
      infer = static_cast<int>(i);
    } else {
      known *= s[i];
    }
  }
  if (infer >= 0) {
    EG_ASSERT(known > 0 && numel_ % known == 0, "cannot view ", shape_str(shape_), " as ", shape_str(shape));
    s[infer] = numel_ / known;
  }
  EG_ASSERT(shape_numel(s) == numel_, "cannot view ", shape_str(shape_), " as ", shape_str(shape));
  Tensor t = *this;
  t.shape_ = s;
  return t;
}

Tensor Tensor::slice(int64_t begin, int64_t end) const {
  EG_ASSERT(ndim() >= 1 && 0 <= begin && begin <= end && end <= shape_[0], "slice [", begin, ", ",
            end, ") of ", shape_str(shape_));
  Tensor t = *this;
  int64_t row = shape_[0] == 0 ? 0 : numel_ / shape_[0];
  t.offset_bytes_ += static_cast<size_t>(begin * row) * dtype_size(dtype_);
  t.shape_[0] = end - begin;
  t.numel_ = (end - begin) * row;
  return t;
}

Tensor Tensor::clone() const { return copy_to(device_); }

Tensor Tensor::copy_to(Device device) const {
  Tensor t = empty(shape_, dtype_, device);
  t.copy_from(*this);
  return t;
}

Tensor Tensor::to(Device device) const { return device == device_ ? *this : copy_to(device); }

void Tensor::copy_from(const Tensor& src) {
  EG_ASSERT(src.shape_ == shape_ && src.dtype_ == dtype_, "copy_from ", src.describe(), " into ",
            describe());
  if (numel_ == 0) return;
  if (is_cpu() && src.is_cpu()) {
    std::memcpy(raw(), src.raw(), nbytes());
    return;
  }
#ifdef ENGRAM_HAVE_CUDA
  cuda_copy(raw(), device_, src.raw(), src.device_, nbytes());
#else
  EG_FAIL("copy_from ", src.describe(), " into ", describe(), ": this build has no CUDA backend");
#endif
}

void Tensor::zero_() {
  if (numel_ == 0) return;
  if (is_cpu()) {
    std::memset(raw(), 0, nbytes());
    return;
  }
#ifdef ENGRAM_HAVE_CUDA
  cuda_zero(raw(), nbytes());
#else
  EG_FAIL("zero_ on ", describe(), ": this build has no CUDA backend");
#endif
}

std::string Tensor::describe() const {
  return std::string(dtype_name(dtype_)) + shape_str(shape_) + " " + device_name(device_);
}

void check_shape(const Tensor& t, const Shape& expected, const char* what) {
  EG_ASSERT(t.defined(), what, " is undefined");
  EG_ASSERT(t.shape() == expected, what, " has shape ", shape_str(t.shape()), ", expected ",
            shape_str(expected));
}

void check_dtype(const Tensor& t, DType expected, const char* what) {
  EG_ASSERT(t.dtype() == expected, what, " has dtype ", dtype_name(t.dtype()), ", expected ",
            dtype_name(expected));
}

}  // namespace engram
