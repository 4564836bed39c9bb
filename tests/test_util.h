#pragma once
// Helpers shared by the unit tests: seeded random inputs, poisoned outputs (so that elements a kernel
// fails to write are caught), double-precision copies for naive references, closeness checks and
// central differences.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <iomanip>
#include <limits>
#include <numeric>
#include <random>
#include <source_location>
#include <string>
#include <vector>

#include "runtime/tensor.h"

namespace engram::testing_util {

// Float tensor of values uniform in [lo, hi), drawn as float from gen.
inline Tensor random_uniform(const Shape& shape, std::mt19937& gen, float lo = -1.0f, float hi = 1.0f) {
  std::uniform_real_distribution<float> dist(lo, hi);
  Tensor t = Tensor::empty(shape);
  float* p = t.data<float>();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = dist(gen);
  return t;
}

// Overwrites t with values from N(mean, std²), drawn in double and rounded to float.
inline void fill_normal(Tensor& t, std::mt19937& gen, double mean = 0.0, double std = 1.0) {
  std::normal_distribution<double> dist(mean, std);
  float* p = t.data<float>();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = static_cast<float>(dist(gen));
}

// A new tensor of normal draws (double, rounded to float).
inline Tensor random_normal(const Shape& shape, std::mt19937& gen, double std = 1.0) {
  Tensor t = Tensor::empty(shape);
  fill_normal(t, gen, 0.0, std);
  return t;
}

// Ids of type T (int32_t or int64_t) uniform in [0, high).
template <class T>
Tensor random_ids(const Shape& shape, int64_t high, std::mt19937& gen) {
  std::uniform_int_distribution<int64_t> dist(0, high - 1);
  std::vector<T> ids(shape_numel(shape));
  for (T& id : ids) id = static_cast<T>(dist(gen));
  return Tensor::from_vector(ids, shape);
}

// Float tensor of NaN: poisons an output so that any element the kernel does not write shows up.
inline Tensor nan_tensor(const Shape& shape) {
  return Tensor::full(shape, std::numeric_limits<float>::quiet_NaN());
}

// Id tensor of -1 (never a valid id): the integer counterpart of nan_tensor.
template <class T>
Tensor poisoned_ids(const Shape& shape) {
  return Tensor::from_vector(std::vector<T>(shape_numel(shape), T{-1}), shape);
}

// The elements of a float tensor as doubles, for references computed in double.
inline std::vector<double> to_double(const Tensor& t) {
  const std::vector<float> v = t.to_vector<float>();
  return {v.begin(), v.end()};
}

// What a kernel added to an output it accumulates into: after − before, elementwise in float.
inline Tensor added(const Tensor& after, const std::vector<float>& before) {
  EG_ASSERT(after.numel() == static_cast<int64_t>(before.size()), "added: ", after.describe(), " vs ",
            before.size(), " elements");
  Tensor d = Tensor::empty(after.shape());
  for (int64_t i = 0; i < after.numel(); ++i) d.data<float>()[i] = after.data<float>()[i] - before[i];
  return d;
}

// Σ a_i·b_i in index order.
inline double dot(const std::vector<double>& a, const std::vector<double>& b) {
  EG_ASSERT(a.size() == b.size(), "dot of ", a.size(), " and ", b.size(), " elements");
  return std::inner_product(a.begin(), a.end(), b.begin(), 0.0);
}

// Same shape, dtype and bytes (NaN payloads and the sign of zero included).
inline bool bitwise_equal(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() && a.dtype() == b.dtype() && std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}

// Checks |actual_i − expected_i| <= atol + rtol·|expected_i| for every element (NaN never passes) and
// reports, at the caller's line, the first element that does not and how many do not.
inline void expect_close(const Tensor& actual, const std::vector<double>& expected, double rtol, double atol,
                         const std::string& what,
                         std::source_location where = std::source_location::current()) {
  if (actual.numel() != static_cast<int64_t>(expected.size())) {
    ADD_FAILURE_AT(where.file_name(), where.line())
        << what << ": " << actual.numel() << " elements, expected " << expected.size();
    return;
  }
  const float* p = actual.data<float>();
  int64_t first = -1, mismatches = 0;
  for (size_t i = 0; i < expected.size(); ++i) {
    const double tol = atol + rtol * std::fabs(expected[i]);
    const bool close = p[i] == expected[i] || std::fabs(p[i] - expected[i]) <= tol;  // equal infinities pass
    if (close) continue;
    if (first < 0) first = static_cast<int64_t>(i);
    ++mismatches;
  }
  if (first < 0) return;
  const double want = expected[first], tol = atol + rtol * std::fabs(want);
  ADD_FAILURE_AT(where.file_name(), where.line())
      << std::setprecision(9) << what << ": " << mismatches << " of " << expected.size() << " elements differ; the first, at index "
      << first << ", is " << p[first] << " where " << want << " was expected (difference "
      << std::fabs(p[first] - want) << ", tolerance " << tol << " = atol " << atol << " + rtol " << rtol
      << " * |expected|)";
}

// Central differences (L(x + h·e_i) − L(x − h·e_i)) / 2h for every element of x. `loss` reads x,
// which is perturbed in place one element at a time and restored exactly.
inline std::vector<double> numeric_gradient(std::vector<double>& x, const std::function<double()>& loss,
                                            double h) {
  std::vector<double> grad(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    const double saved = x[i];
    x[i] = saved + h;
    const double up = loss();
    x[i] = saved - h;
    const double down = loss();
    x[i] = saved;
    grad[i] = (up - down) / (2.0 * h);
  }
  return grad;
}

// Primality by trial division: slow, obviously right.
inline bool naive_is_prime(int64_t n) {
  if (n < 2) return false;
  for (int64_t d = 2; d * d <= n; ++d)
    if (n % d == 0) return false;
  return true;
}

}  // namespace engram::testing_util
