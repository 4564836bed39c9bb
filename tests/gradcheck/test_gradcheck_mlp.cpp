// Finite-difference check of SwiGluMlp::backward: dx and the gradients of w1, w3, w2, which must
// be accumulated onto what the gradient buffers already hold; and the residual the forward adds.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>

#include "model/mlp.h"
#include "tests/gradcheck/finite_difference.h"

namespace engram {
namespace {

using test::check_gradient;
using test::Eval;

void check_mlp(int64_t n, int64_t d, int64_t f, unsigned seed) {
  std::mt19937 rng(seed);
  ParameterRegistry params;
  SwiGluMlp mlp(params, "mlp", d, f, 0.02, 0.01);
  for (Parameter* p : params.all()) {
    test::fill_normal(p->value, rng, 0.0, 0.5);
    test::fill_normal(p->grad, rng);  // backward must add to this
  }
  const test::GradientSnapshot grad_before(params);

  Tensor x = test::random_normal({n, d}, rng);
  const Tensor dy = test::random_normal({n, d}, rng);
  mlp.forward(x);
  const Tensor dx = mlp.backward(dy);
  ASSERT_EQ(dx.shape(), x.shape());

  auto evaluate = [&] { return Eval{test::dot(dy, mlp.forward(x))}; };
  const auto rx = check_gradient("dx", x, dx.to_vector<float>(), evaluate, rng);
  EXPECT_EQ(rx.checked, std::min<int64_t>(20, x.numel()));
  EXPECT_GT(rx.max_abs_grad, 0.0);
  for (Parameter* p : params.all()) {
    const auto r = check_gradient(p->name, p->value, grad_before.added(*p), evaluate, rng);
    EXPECT_EQ(r.checked, std::min<int64_t>(20, p->value.numel())) << p->name;
    EXPECT_GT(r.max_abs_grad, 0.0) << p->name;
  }
}

TEST(GradcheckMlp, ResidualIsAddedToTheOutput) {
  std::mt19937 rng(4);
  ParameterRegistry params;
  SwiGluMlp mlp(params, "mlp", 9, 13, 0.02, 0.01);
  for (Parameter* p : params.all()) test::fill_normal(p->value, rng, 0.0, 0.5);
  const Tensor x = test::random_normal({11, 9}, rng), residual = test::random_normal({11, 9}, rng);
  const std::vector<float> alone = mlp.forward(x).to_vector<float>();
  const std::vector<float> onto = mlp.forward(x, residual).to_vector<float>();
  const std::vector<float> r = residual.to_vector<float>();
  for (size_t i = 0; i < alone.size(); ++i)
    ASSERT_NEAR(onto[i], alone[i] + r[i], 1e-6 * (1.0 + std::abs(alone[i] + r[i]))) << "element " << i;
}

TEST(GradcheckMlp, OddSizes) { check_mlp(13, 7, 5, 1); }
TEST(GradcheckMlp, OneToken) { check_mlp(1, 3, 7, 2); }
TEST(GradcheckMlp, WideHidden) { check_mlp(5, 9, 33, 3); }

}  // namespace
}  // namespace engram
