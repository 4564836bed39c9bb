#pragma once
// Tensor: a contiguous, row-major n-d array with a dtype and a device, sharing its storage.
// Views (reshape, leading-dimension slices) share storage; there are no strides, so every
// tensor is contiguous and kernels can treat it as a flat buffer.
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "runtime/error.h"

namespace engram {

enum class DType : uint8_t { F32, BF16, I32, I64 };
enum class Device : uint8_t { CPU, CUDA };

size_t dtype_size(DType dtype);
const char* dtype_name(DType dtype);
const char* device_name(Device device);

using Shape = std::vector<int64_t>;
std::string shape_str(const Shape& shape);
int64_t shape_numel(const Shape& shape);

template <class T> constexpr DType dtype_of();
template <> constexpr DType dtype_of<float>() { return DType::F32; }
template <> constexpr DType dtype_of<int32_t>() { return DType::I32; }
template <> constexpr DType dtype_of<int64_t>() { return DType::I64; }

// Owns one device allocation; freed through the allocator that made it.
class Storage {
 public:
  Storage(size_t bytes, Device device);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
  void* data() const { return data_; }
  size_t bytes() const { return bytes_; }
  Device device() const { return device_; }

 private:
  void* data_ = nullptr;
  size_t bytes_ = 0;
  Device device_;
};

class Tensor {
 public:
  Tensor() = default;

  static Tensor empty(const Shape& shape, DType dtype = DType::F32, Device device = Device::CPU);
  static Tensor zeros(const Shape& shape, DType dtype = DType::F32, Device device = Device::CPU);
  static Tensor full(const Shape& shape, float value, Device device = Device::CPU);  // F32
  template <class T>
  static Tensor from_vector(const std::vector<T>& values, const Shape& shape) {
    Tensor t = empty(shape, dtype_of<T>(), Device::CPU);
    EG_ASSERT(static_cast<int64_t>(values.size()) == t.numel(), "from_vector size");
    std::copy(values.begin(), values.end(), t.data<T>());
    return t;
  }
  template <class T>
  static Tensor from_vector(const std::vector<T>& values) {  // 1-D
    return from_vector(values, {static_cast<int64_t>(values.size())});
  }

  bool defined() const { return storage_ != nullptr; }
  const Shape& shape() const { return shape_; }
  int ndim() const { return static_cast<int>(shape_.size()); }
  int64_t dim(int i) const;  // negative i counts from the end
  int64_t numel() const { return numel_; }
  size_t nbytes() const { return static_cast<size_t>(numel_) * dtype_size(dtype_); }
  DType dtype() const { return dtype_; }
  Device device() const { return device_; }
  bool is_cpu() const { return device_ == Device::CPU; }

  // Rows and columns when viewed as a matrix [prod(shape[:-1]), shape[-1]].
  int64_t rows() const;
  int64_t cols() const { return ndim() == 0 ? 1 : dim(-1); }

  void* raw() const;
  template <class T>
  T* data() const {
    EG_ASSERT(dtype_ == dtype_of<T>(), "dtype mismatch: tensor is ", dtype_name(dtype_));
    return static_cast<T*>(raw());
  }

  Tensor view(const Shape& shape) const;               // same numel; -1 infers one dimension
  Tensor slice(int64_t begin, int64_t end) const;      // [begin, end) along dimension 0
  Tensor clone() const;
  Tensor copy_to(Device device) const;                 // a new tensor on `device` with the same contents
  Tensor to(Device device) const;                      // this tensor when on `device` already, else copy_to
  void copy_from(const Tensor& src);                   // same shape and dtype, any devices
  void zero_();
  std::string describe() const;                        // "f32[2, 3] cpu"

  // Host copies for tests and small metadata (a device tensor is copied to the host first).
  template <class T>
  std::vector<T> to_vector() const {
    if (!is_cpu()) return copy_to(Device::CPU).to_vector<T>();
    const T* p = data<T>();
    return std::vector<T>(p, p + numel_);
  }

 private:
  std::shared_ptr<Storage> storage_;
  size_t offset_bytes_ = 0;
  Shape shape_;
  int64_t numel_ = 0;
  DType dtype_ = DType::F32;
  Device device_ = Device::CPU;
};

// Shape checks used by kernels: one message names the argument and the expectation.
void check_shape(const Tensor& t, const Shape& expected, const char* what);
void check_dtype(const Tensor& t, DType expected, const char* what);

}  // namespace engram
