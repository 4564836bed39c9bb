#include "kernels/embedding.h"

#include <algorithm>
#include <numeric>
#include <vector>

namespace engram::kernels::cpu {

namespace {

// Calls f(ids_pointer) with the ids typed as they are stored (i32 or i64).
template <class F>
void visit_ids(const Tensor& ids, const char* what, F&& f) {
  if (ids.dtype() == DType::I32) {
    f(ids.data<int32_t>());
  } else {
    check_dtype(ids, DType::I64, what);
    f(ids.data<int64_t>());
  }
}

// Checks that `rows` holds one row of `width` floats per id.
void check_rows(const Tensor& rows, const Tensor& ids, int64_t width, const char* what) {
  check_dtype(rows, DType::F32, what);
  EG_ASSERT(rows.numel() == ids.numel() * width, what, " ", rows.describe(), " needs ", ids.numel(), "·", width,
            " elements");
}

void check_id(int64_t id, int64_t n_rows, int64_t i) {
  EG_CHECK(id >= 0 && id < n_rows, "id ", id, " at position ", i, " is outside the table's ", n_rows,
           " rows [0, ", n_rows, ")");
}

}  // namespace

void embedding_gather(const Tensor& table, const Tensor& ids, Tensor& out) {
  check_dtype(table, DType::F32, "embedding_gather table");
  EG_ASSERT(table.ndim() == 2, "embedding_gather table must be [R, C], got ", table.describe());
  const int64_t n = ids.numel(), c = table.dim(1), n_rows = table.dim(0);
  check_rows(out, ids, c, "embedding_gather out");
  const float* src = table.data<float>();
  float* dst = out.data<float>();
  visit_ids(ids, "embedding_gather ids", [&](const auto* id) {
    for (int64_t i = 0; i < n; ++i) {
      check_id(id[i], n_rows, i);
      std::copy_n(src + id[i] * c, c, dst + i * c);
    }
  });
}

void embedding_scatter_add(const Tensor& dout, const Tensor& ids, Tensor& dtable) {
  check_dtype(dtable, DType::F32, "embedding_scatter_add dtable");
  EG_ASSERT(dtable.ndim() == 2, "embedding_scatter_add dtable must be [R, C], got ", dtable.describe());
  const int64_t n = ids.numel(), c = dtable.dim(1), n_rows = dtable.dim(0);
  check_rows(dout, ids, c, "embedding_scatter_add dout");
  const float* src = dout.data<float>();
  float* dst = dtable.data<float>();
  // Sequential over i: every row receives its contributions in ascending i.
  visit_ids(ids, "embedding_scatter_add ids", [&](const auto* id) {
    for (int64_t i = 0; i < n; ++i) {
      check_id(id[i], n_rows, i);
      float* row = dst + id[i] * c;
      const float* g = src + i * c;
      for (int64_t j = 0; j < c; ++j) row[j] += g[j];
    }
  });
}

RowGrads reduce_rows(const Tensor& dout, const Tensor& ids) {
  const int64_t n = ids.numel(), c = dout.cols();
  check_rows(dout, ids, c, "reduce_rows dout");
  std::vector<int64_t> key(n);
  visit_ids(ids, "reduce_rows ids", [&](const auto* id) {
    for (int64_t i = 0; i < n; ++i) {
      EG_CHECK(id[i] >= 0, "row id ", id[i], " at position ", i, " is negative");
      key[i] = id[i];
    }
  });
  // Stable sort of positions by id: equal ids keep ascending i, so each segment sums in i order.
  std::vector<int64_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return key[a] < key[b]; });
  int64_t n_unique = 0;
  for (int64_t s = 0; s < n; ++s) n_unique += (s == 0 || key[order[s]] != key[order[s - 1]]);

  RowGrads out{Tensor::empty({n_unique}, DType::I64), Tensor::zeros({n_unique, c})};
  int64_t* rows = out.rows.data<int64_t>();
  float* values = out.values.data<float>();
  const float* src = dout.data<float>();
  int64_t u = -1;
  for (int64_t s = 0; s < n; ++s) {
    const int64_t i = order[s];
    if (s == 0 || key[i] != key[order[s - 1]]) rows[++u] = key[i];
    float* acc = values + u * c;
    const float* g = src + i * c;
    for (int64_t j = 0; j < c; ++j) acc[j] += g[j];
  }
  return out;
}

}  // namespace engram::kernels::cpu
