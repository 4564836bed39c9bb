// Finite-difference check of EngramModule::backward on L = Σ dy ⊙ forward(h, ids): dh, every dense
// parameter (W_K, W_V and their biases, the three norm gains, the conv weights) and the table's
// row-sparse gradient (touched rows against differences; untouched rows get no entry and do not
// move the loss). Small tables and a small vocabulary make many lookups share rows.
#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <set>

#include "model/engram.h"
#include "tests/gradcheck/finite_difference.h"

namespace engram {
namespace {

using test::check_gradient;
using test::Eval;

ModelConfig engram_config(int d_model, int max_ngram, int heads, int head_dim, const std::string& table_sizes,
                          int conv_kernel) {
  const std::string text = "model { vocab_size: 11 d_model: " + std::to_string(d_model) +
                           " n_layers: 3 n_heads: 1 d_ff: 4 n_dense_layers: 3 engram { layers: [0, 2] max_ngram: " +
                           std::to_string(max_ngram) + " heads_per_ngram: " + std::to_string(heads) +
                           " head_dim: " + std::to_string(head_dim) + " table_size: " + table_sizes +
                           " conv_kernel: " + std::to_string(conv_kernel) + " } }";
  return parse_config_text(text, "test").model();
}

void check_engram(const ModelConfig& cfg, int64_t batch, int64_t seq, unsigned seed) {
  const int64_t vocab_c = 11, pad_c = 3, d = cfg.d_model();
  std::mt19937 rng(seed);
  const std::vector<EngramLayerHash> plans = make_engram_hashing(cfg, vocab_c);
  ParameterRegistry params;
  EngramModule engram(cfg, plans[1], pad_c, params);
  Parameter& table = params.get("layers.2.engram.table");
  ASSERT_FALSE(table.grad.defined());

  // Non-trivial values on every path: gains away from 1, non-zero conv and biases.
  for (Parameter* p : params.all()) {
    if (p->name.find("norm") != std::string::npos) test::fill_uniform(p->value, rng, 0.5, 1.5);
    else test::fill_normal(p->value, rng, 0.0, p == &table ? 1.0 : 0.5);
    if (p->grad.defined()) test::fill_normal(p->grad, rng);  // backward must add to this
  }
  table.row_grads.push_back({});  // an earlier micro-batch's entry: backward appends after it
  const test::GradientSnapshot grad_before(params);

  Tensor ids = Tensor::empty({batch, seq}, DType::I32);
  std::uniform_int_distribution<int32_t> token(0, static_cast<int32_t>(vocab_c - 1));
  for (int64_t i = 0; i < ids.numel(); ++i) ids.data<int32_t>()[i] = token(rng);
  Tensor h = test::random_normal({batch, seq, d}, rng);
  const Tensor dy = test::random_normal({batch, seq, d}, rng);
  engram.forward(h, ids);
  const Tensor dh = engram.backward(dy);
  ASSERT_EQ(dh.shape(), h.shape());

  auto evaluate = [&] { return Eval{test::dot(dy, engram.forward(h, ids))}; };
  const auto rh = check_gradient("dh", h, dh.to_vector<float>(), evaluate, rng);
  EXPECT_EQ(rh.checked, std::min<int64_t>(20, h.numel()));
  EXPECT_GT(rh.max_abs_grad, 0.0);
  for (Parameter* p : params.all()) {
    if (!p->grad.defined()) continue;
    const auto r = check_gradient(p->name, p->value, grad_before.added(*p), evaluate, rng);
    EXPECT_EQ(r.checked, std::min<int64_t>(20, p->value.numel())) << p->name;
    EXPECT_GT(r.max_abs_grad, 0.0) << p->name;
  }

  // Table: one new entry with strictly ascending rows.
  ASSERT_EQ(table.row_grads.size(), 2u);
  const RowGrads& rg = table.row_grads.back();
  const int64_t width = cfg.engram().head_dim(), n_touched = rg.rows.numel();
  ASSERT_EQ(rg.values.shape(), (Shape{n_touched, width}));
  const std::vector<int64_t> rows = rg.rows.to_vector<int64_t>();
  for (int64_t u = 1; u < n_touched; ++u) ASSERT_LT(rows[u - 1], rows[u]);
  const std::set<int64_t> touched(rows.begin(), rows.end());
  std::vector<int64_t> untouched;
  for (int64_t r = 0; r < table.value.dim(0); ++r)
    if (!touched.count(r)) untouched.push_back(r);
  ASSERT_FALSE(untouched.empty()) << "the test wants some rows that no lookup reaches";
  ASSERT_LT(n_touched, batch * seq * static_cast<int64_t>(plans[1].primes.size())) << "no repeated rows";

  std::vector<int64_t> sample(rows);
  std::shuffle(sample.begin(), sample.end(), rng);
  sample.resize(std::min<size_t>(sample.size(), 8));
  for (int64_t r : sample) {
    const int64_t u = std::lower_bound(rows.begin(), rows.end(), r) - rows.begin();
    const float* g = rg.values.data<float>() + u * width;
    check_gradient("table row " + std::to_string(r), table.value.slice(r, r + 1),
                   std::vector<float>(g, g + width), evaluate, rng);
  }
  // An untouched row does not enter the forward at all: the loss does not change by one bit.
  const test::FdOptions exact{.eps = 1e-3, .rtol = 0.0, .atol = 0.0};
  std::shuffle(untouched.begin(), untouched.end(), rng);
  untouched.resize(std::min<size_t>(untouched.size(), 4));
  for (int64_t r : untouched)
    check_gradient("untouched table row " + std::to_string(r), table.value.slice(r, r + 1),
                   std::vector<float>(width, 0.0f), evaluate, rng, exact);
}

TEST(GradcheckEngram, Trigram) { check_engram(engram_config(7, 3, 2, 3, "[7, 11]", 3), 2, 9, 1); }
TEST(GradcheckEngram, FourGramWideConv) { check_engram(engram_config(5, 4, 1, 2, "[5, 7, 9]", 4), 3, 7, 2); }
TEST(GradcheckEngram, BigramSingleSequence) { check_engram(engram_config(9, 2, 3, 1, "[13]", 1), 1, 13, 3); }

}  // namespace
}  // namespace engram
