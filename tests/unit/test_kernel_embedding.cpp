// embedding_gather, embedding_scatter_add and reduce_rows against naive loops in the test.
#include <gtest/gtest.h>

#include <map>
#include <random>
#include <vector>

#include "kernels/embedding.h"
#include "tests/test_util.h"

namespace engram {
namespace {

using namespace testing_util;

// Ids as int64 whatever their stored dtype.
std::vector<int64_t> ids_of(const Tensor& ids) {
  if (ids.dtype() == DType::I32) {
    std::vector<int32_t> v = ids.to_vector<int32_t>();
    return {v.begin(), v.end()};
  }
  return ids.to_vector<int64_t>();
}

template <class T>
void check_gather(int64_t n_rows, int64_t c, const Shape& ids_shape, std::mt19937& gen) {
  Tensor table = random_uniform({n_rows, c}, gen);
  Tensor ids = random_ids<T>(ids_shape, n_rows, gen);
  Shape out_shape = ids_shape;
  out_shape.push_back(c);
  Tensor out = nan_tensor(out_shape);
  kernels::embedding_gather(table, ids, out);
  const std::vector<int64_t> id = ids_of(ids);
  const float* t = table.data<float>();
  const float* o = out.data<float>();
  for (size_t i = 0; i < id.size(); ++i)
    for (int64_t j = 0; j < c; ++j) ASSERT_EQ(o[i * c + j], t[id[i] * c + j]) << "id " << i << " col " << j;
}

TEST(KernelEmbedding, GatherMatchesNaiveForI32AndI64Ids) {
  std::mt19937 gen(1);
  for (int64_t n_rows : {1, 13}) {
    for (int64_t c : {1, 7, 33}) {
      check_gather<int32_t>(n_rows, c, {3, 11}, gen);
      check_gather<int64_t>(n_rows, c, {1}, gen);
      check_gather<int64_t>(n_rows, c, {33}, gen);
    }
  }
}

TEST(KernelEmbedding, GatherRejectsOutOfRangeIdNamingIdAndRowCount) {
  Tensor table = Tensor::zeros({13, 3});
  Tensor out = nan_tensor({3, 3});
  for (int64_t bad : {int64_t{13}, int64_t{-1}, int64_t{1} << 40}) {
    Tensor ids = Tensor::from_vector<int64_t>({0, bad, 2}, {3});
    try {
      kernels::embedding_gather(table, ids, out);
      FAIL() << "no error for id " << bad;
    } catch (const Error& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find(std::to_string(bad)), std::string::npos) << msg;
      EXPECT_NE(msg.find("13"), std::string::npos) << msg;
    }
  }
  Tensor ids32 = Tensor::from_vector<int32_t>({0, 1, 99}, {3});
  EXPECT_THROW(kernels::embedding_gather(table, ids32, out), Error);
}

// Heavily duplicated ids: a handful of distinct rows, many hits each.
Tensor duplicated_ids(int64_t n, std::mt19937& gen) {
  const std::vector<int64_t> pool = {0, 3, 4, 12, 5};
  std::uniform_int_distribution<size_t> pick(0, pool.size() - 1);
  std::vector<int64_t> ids(n);
  for (int64_t& id : ids) id = pool[pick(gen)];
  return Tensor::from_vector(ids, {n});
}

TEST(KernelEmbedding, ScatterAddAccumulatesInAscendingOrder) {
  std::mt19937 gen(2);
  for (int64_t c : {1, 7, 13}) {
    for (int64_t n : {1, 33, 101}) {
      Tensor ids = duplicated_ids(n, gen);
      Tensor dout = random_uniform({n, c}, gen);
      Tensor dtable = random_uniform({13, c}, gen);
      // Naive: float accumulation into the existing rows in ascending i (the documented order).
      std::vector<float> expected = dtable.to_vector<float>();
      std::vector<double> expected_double(expected.begin(), expected.end());
      const std::vector<int64_t> id = ids_of(ids);
      const float* g = dout.data<float>();
      for (int64_t i = 0; i < n; ++i) {
        for (int64_t j = 0; j < c; ++j) {
          expected[id[i] * c + j] += g[i * c + j];
          expected_double[id[i] * c + j] += g[i * c + j];
        }
      }
      kernels::embedding_scatter_add(dout, ids, dtable);
      const float* got = dtable.data<float>();
      for (size_t i = 0; i < expected.size(); ++i) {
        ASSERT_EQ(got[i], expected[i]) << "element " << i;
        ASSERT_NEAR(got[i], expected_double[i], 1e-5);
      }
    }
  }
}

TEST(KernelEmbedding, ScatterAddIsTheGradientOfGatherByFiniteDifferences) {
  // f(table) = Σ G ⊙ gather(table, ids); ∂f/∂table = scatter_add(G, ids) into zeros.
  std::mt19937 gen(3);
  const int64_t n_rows = 7, c = 3;
  Tensor table = random_uniform({n_rows, c}, gen);
  Tensor ids = Tensor::from_vector<int32_t>({2, 0, 2, 6, 2, 0, 5, 6, 2}, {3, 3});
  Tensor g = random_uniform({3, 3, c}, gen);
  const std::vector<double> gd = to_double(g);
  auto f = [&](const Tensor& tab) {
    Tensor out = nan_tensor({3, 3, c});
    kernels::embedding_gather(tab, ids, out);
    return dot(gd, to_double(out));
  };
  Tensor grad = Tensor::zeros({n_rows, c});
  kernels::embedding_scatter_add(g, ids, grad);
  const float h = 0.25f;  // f is linear in the table: any step is exact up to rounding
  for (int64_t e = 0; e < table.numel(); ++e) {
    Tensor plus = table.clone(), minus = table.clone();
    plus.data<float>()[e] += h;
    minus.data<float>()[e] -= h;
    const double fd = (f(plus) - f(minus)) / (2.0 * h);
    EXPECT_NEAR(grad.data<float>()[e], fd, 1e-5) << "element " << e;
  }
}

TEST(KernelEmbedding, ReduceRowsMatchesNaiveMapSum) {
  std::mt19937 gen(4);
  for (int64_t c : {1, 7, 33}) {
    for (int64_t n : {1, 13, 257}) {
      Tensor ids = duplicated_ids(n, gen);
      // Large ids (global rows of a big table) must sort like any other.
      if (n > 1) ids.data<int64_t>()[n / 2] = int64_t{1} << 40;
      Tensor dout = random_uniform({n, c}, gen);
      std::map<int64_t, std::vector<float>> in_order;    // float, ascending i: the documented result
      std::map<int64_t, std::vector<double>> in_double;  // exact-ish
      const std::vector<int64_t> id = ids_of(ids);
      const float* g = dout.data<float>();
      for (int64_t i = 0; i < n; ++i) {
        auto& f = in_order[id[i]];
        auto& d = in_double[id[i]];
        f.resize(c, 0.0f);
        d.resize(c, 0.0);
        for (int64_t j = 0; j < c; ++j) {
          f[j] += g[i * c + j];
          d[j] += g[i * c + j];
        }
      }
      RowGrads rg = kernels::reduce_rows(dout, ids);
      ASSERT_EQ(rg.rows.dtype(), DType::I64);
      ASSERT_EQ(rg.rows.numel(), static_cast<int64_t>(in_order.size()));
      ASSERT_EQ(rg.values.shape(), (Shape{rg.rows.numel(), c}));
      const int64_t* rows = rg.rows.data<int64_t>();
      const float* values = rg.values.data<float>();
      int64_t u = 0;
      for (const auto& [row, sum] : in_order) {
        ASSERT_EQ(rows[u], row);
        for (int64_t j = 0; j < c; ++j) {
          ASSERT_EQ(values[u * c + j], sum[j]) << "row " << row << " col " << j;
          ASSERT_NEAR(values[u * c + j], in_double[row][j], 1e-5);
        }
        ++u;
      }
    }
  }
}

TEST(KernelEmbedding, ReduceRowsAcceptsI32BatchIdsAndEmptyInput) {
  std::mt19937 gen(5);
  Tensor ids = random_ids<int32_t>({3, 7}, 5, gen);
  Tensor dout = random_uniform({3, 7, 3}, gen);
  RowGrads rg = kernels::reduce_rows(dout, ids);
  // Scattering the reduced rows equals scattering the raw rows (same per-row summation order).
  Tensor from_reduced = Tensor::zeros({5, 3}), from_raw = Tensor::zeros({5, 3});
  kernels::embedding_scatter_add(rg.values, rg.rows, from_reduced);
  kernels::embedding_scatter_add(dout, ids, from_raw);
  EXPECT_TRUE(bitwise_equal(from_reduced, from_raw));

  RowGrads empty = kernels::reduce_rows(Tensor::empty({0, 4}), Tensor::empty({0}, DType::I64));
  EXPECT_EQ(empty.rows.numel(), 0);
  EXPECT_EQ(empty.values.shape(), (Shape{0, 4}));
}

TEST(KernelEmbedding, ReduceRowsIsDeterministic) {
  std::mt19937 gen(6);
  Tensor ids = duplicated_ids(999, gen);
  Tensor dout = random_uniform({999, 13}, gen);
  RowGrads a = kernels::reduce_rows(dout, ids), b = kernels::reduce_rows(dout, ids);
  EXPECT_TRUE(bitwise_equal(a.rows, b.rows));
  EXPECT_TRUE(bitwise_equal(a.values, b.values));
}

}  // namespace
}  // namespace engram
