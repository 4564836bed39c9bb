// Causal attention forward/backward against a naive double-precision reference and finite differences.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "kernels/attention.h"
#include "tests/test_util.h"

namespace engram {
namespace {

using namespace testing_util;

struct Dims {
  int64_t batch, seq, heads, head_dim;
  int64_t at(int64_t b, int64_t t, int64_t h) const { return ((b * seq + t) * heads + h) * head_dim; }
  Shape shape() const { return {batch, seq, heads, head_dim}; }
  double scale() const { return 1.0 / std::sqrt(static_cast<double>(head_dim)); }
};

// Softmax probabilities P [T, T] of head (b, h), zero above the diagonal, and each row's log-sum-exp.
std::vector<double> naive_probs(const std::vector<double>& q, const std::vector<double>& k, const Dims& d,
                                int64_t b, int64_t h, std::vector<double>* lse) {
  std::vector<double> p(d.seq * d.seq, 0.0);
  for (int64_t i = 0; i < d.seq; ++i) {
    std::vector<double> s(i + 1);
    for (int64_t j = 0; j <= i; ++j) {
      double dot = 0.0;
      for (int64_t c = 0; c < d.head_dim; ++c) dot += q[d.at(b, i, h) + c] * k[d.at(b, j, h) + c];
      s[j] = dot * d.scale();
    }
    const double max = *std::max_element(s.begin(), s.end());
    double sum = 0.0;
    for (double v : s) sum += std::exp(v - max);
    const double row_lse = max + std::log(sum);
    for (int64_t j = 0; j <= i; ++j) p[i * d.seq + j] = std::exp(s[j] - row_lse);
    if (lse) (*lse)[(b * d.heads + h) * d.seq + i] = row_lse;
  }
  return p;
}

std::vector<double> naive_forward(const std::vector<double>& q, const std::vector<double>& k,
                                  const std::vector<double>& v, const Dims& d, std::vector<double>* lse) {
  std::vector<double> out(q.size(), 0.0);
  for (int64_t b = 0; b < d.batch; ++b)
    for (int64_t h = 0; h < d.heads; ++h) {
      const std::vector<double> p = naive_probs(q, k, d, b, h, lse);
      for (int64_t i = 0; i < d.seq; ++i)
        for (int64_t j = 0; j <= i; ++j)
          for (int64_t c = 0; c < d.head_dim; ++c)
            out[d.at(b, i, h) + c] += p[i * d.seq + j] * v[d.at(b, j, h) + c];
    }
  return out;
}

struct Grads {
  std::vector<double> dq, dk, dv;
};

// Naive backward; D_i uses Σ_j P_ij·dP_ij (the kernel uses the equivalent Σ_d dO_id·O_id).
Grads naive_backward(const std::vector<double>& dout, const std::vector<double>& q,
                     const std::vector<double>& k, const std::vector<double>& v, const Dims& d) {
  Grads g{std::vector<double>(q.size(), 0.0), std::vector<double>(q.size(), 0.0),
          std::vector<double>(q.size(), 0.0)};
  for (int64_t b = 0; b < d.batch; ++b)
    for (int64_t h = 0; h < d.heads; ++h) {
      const std::vector<double> p = naive_probs(q, k, d, b, h, nullptr);
      for (int64_t i = 0; i < d.seq; ++i) {
        std::vector<double> dp(i + 1, 0.0);
        double delta = 0.0;
        for (int64_t j = 0; j <= i; ++j) {
          for (int64_t c = 0; c < d.head_dim; ++c) dp[j] += dout[d.at(b, i, h) + c] * v[d.at(b, j, h) + c];
          delta += p[i * d.seq + j] * dp[j];
        }
        for (int64_t j = 0; j <= i; ++j) {
          const double pij = p[i * d.seq + j], ds = pij * (dp[j] - delta) * d.scale();
          for (int64_t c = 0; c < d.head_dim; ++c) {
            g.dq[d.at(b, i, h) + c] += ds * k[d.at(b, j, h) + c];
            g.dk[d.at(b, j, h) + c] += ds * q[d.at(b, i, h) + c];
            g.dv[d.at(b, j, h) + c] += pij * dout[d.at(b, i, h) + c];
          }
        }
      }
    }
  return g;
}

struct Qkv {
  Tensor q, k, v;
};
// q and k uniform in ±qk_range (the score scale), v in ±1.
Qkv random_qkv(const Dims& d, std::mt19937& gen, float qk_range = 1.0f) {
  Qkv x;
  x.q = random_uniform(d.shape(), gen, -qk_range, qk_range);
  x.k = random_uniform(d.shape(), gen, -qk_range, qk_range);
  x.v = random_uniform(d.shape(), gen);
  return x;
}

struct Outputs {
  Tensor out, lse;
};
// Runs the forward into NaN-poisoned outputs.
Outputs run_forward(const Qkv& x, const Dims& d) {
  Outputs o{nan_tensor(d.shape()), nan_tensor({d.batch, d.heads, d.seq})};
  kernels::attention_forward(x.q, x.k, x.v, o.out, o.lse);
  return o;
}

// Forward on random inputs against the naive reference.
void check_forward(const Dims& d, std::mt19937& gen, float qk_range, double out_tol, double lse_tol) {
  const Qkv x = random_qkv(d, gen, qk_range);
  const Outputs o = run_forward(x, d);
  std::vector<double> lse_ref(o.lse.numel());
  const std::vector<double> q = to_double(x.q), k = to_double(x.k), v = to_double(x.v);
  const std::vector<double> out_ref = naive_forward(q, k, v, d, &lse_ref);
  expect_close(o.out, out_ref, 0.0, out_tol, "out");
  expect_close(o.lse, lse_ref, 0.0, lse_tol, "lse");
}

// Random inputs (q, k in ±2), a random dout in ±1, and the kernel's gradients (written into NaN-poisoned
// tensors).
struct BackwardCase {
  Qkv x;
  Tensor dout, dq, dk, dv;
};
BackwardCase run_backward(const Dims& d, std::mt19937& gen) {
  BackwardCase c{random_qkv(d, gen, 2.0f), random_uniform(d.shape(), gen), nan_tensor(d.shape()),
                 nan_tensor(d.shape()), nan_tensor(d.shape())};
  const Outputs o = run_forward(c.x, d);
  kernels::attention_backward(c.dout, c.x.q, c.x.k, c.x.v, o.out, o.lse, c.dq, c.dk, c.dv);
  return c;
}

const Dims kShapes[] = {{1, 1, 1, 4}, {2, 7, 3, 5}, {1, 13, 2, 8}, {2, 33, 1, 3}};

TEST(KernelAttention, ForwardMatchesNaive) {
  std::mt19937 gen(1);
  for (const Dims& d : kShapes) {
    SCOPED_TRACE(shape_str(d.shape()));
    check_forward(d, gen, 2.0f, 1e-5, 1e-5);
  }
}

TEST(KernelAttention, LargeScoresStayFinite) {
  std::mt19937 gen(2);
  check_forward({1, 7, 2, 4}, gen, 30.0f, 1e-4, 1e-3);
}

TEST(KernelAttention, FirstPositionAttendsOnlyToItself) {
  std::mt19937 gen(3);
  const Dims d{2, 5, 3, 4};
  const Qkv x = random_qkv(d, gen);
  const Outputs o = run_forward(x, d);
  for (int64_t b = 0; b < d.batch; ++b)
    for (int64_t h = 0; h < d.heads; ++h)
      for (int64_t c = 0; c < d.head_dim; ++c)
        EXPECT_NEAR(o.out.data<float>()[d.at(b, 0, h) + c], x.v.data<float>()[d.at(b, 0, h) + c], 1e-6);
}

TEST(KernelAttention, LaterKeysAndValuesDoNotAffectEarlierOutputs) {
  std::mt19937 gen(4);
  const Dims d{1, 9, 2, 6};
  Qkv x = random_qkv(d, gen);
  const Outputs first = run_forward(x, d);
  const int64_t last = d.seq - 1;
  for (int64_t h = 0; h < d.heads; ++h)
    for (int64_t c = 0; c < d.head_dim; ++c) {
      x.k.data<float>()[d.at(0, last, h) + c] += 5.0f;
      x.v.data<float>()[d.at(0, last, h) + c] -= 3.0f;
    }
  const Outputs second = run_forward(x, d);
  const float *out = first.out.data<float>(), *out2 = second.out.data<float>();
  const int64_t before_last = d.at(0, last, 0);
  for (int64_t i = 0; i < before_last; ++i) EXPECT_EQ(out[i], out2[i]) << i;
  EXPECT_NE(out[before_last], out2[before_last]);
}

TEST(KernelAttention, BackwardMatchesNaive) {
  std::mt19937 gen(5);
  for (const Dims& d : kShapes) {
    SCOPED_TRACE(shape_str(d.shape()));
    const BackwardCase c = run_backward(d, gen);
    const std::vector<double> q = to_double(c.x.q), k = to_double(c.x.k), v = to_double(c.x.v);
    const Grads ref = naive_backward(to_double(c.dout), q, k, v, d);
    expect_close(c.dq, ref.dq, 0.0, 1e-5, "dq");
    expect_close(c.dk, ref.dk, 0.0, 1e-5, "dk");
    expect_close(c.dv, ref.dv, 0.0, 1e-5, "dv");
  }
}

// L = Σ dO ⊙ attention(q, k, v); central differences on the naive forward for every input element.
TEST(KernelAttention, BackwardMatchesFiniteDifferences) {
  std::mt19937 gen(6);
  const Dims shapes[] = {{1, 5, 2, 4}, {2, 3, 1, 3}};
  for (const Dims& d : shapes) {
    SCOPED_TRACE(shape_str(d.shape()));
    const BackwardCase c = run_backward(d, gen);
    std::vector<double> q = to_double(c.x.q), k = to_double(c.x.k), v = to_double(c.x.v);
    const std::vector<double> dout = to_double(c.dout);
    auto loss = [&] { return dot(dout, naive_forward(q, k, v, d, nullptr)); };
    const double h = 1e-6;
    expect_close(c.dq, numeric_gradient(q, loss, h), 0.0, 1e-5, "dq");
    expect_close(c.dk, numeric_gradient(k, loss, h), 0.0, 1e-5, "dk");
    expect_close(c.dv, numeric_gradient(v, loss, h), 0.0, 1e-5, "dv");
  }
}

TEST(KernelAttention, MismatchedShapesThrow) {
  Tensor q = Tensor::zeros({1, 3, 2, 4}), k = Tensor::zeros({1, 3, 2, 4}), v = Tensor::zeros({1, 4, 2, 4});
  Tensor out = Tensor::zeros({1, 3, 2, 4}), lse = Tensor::zeros({1, 2, 3});
  EXPECT_THROW(kernels::attention_forward(q, k, v, out, lse), Error);
  Tensor bad_lse = Tensor::zeros({1, 3, 2});  // [B, T, H] instead of [B, H, T]
  EXPECT_THROW(kernels::attention_forward(q, k, q, out, bad_lse), Error);
}

}  // namespace
}  // namespace engram
