#include "kernels/embedding.h"

#include <algorithm>

#include "kernels/checks.h"
#include "runtime/key_order.h"

namespace engram::kernels::cpu {

namespace {

void check_id(int64_t id, int64_t n_rows, int64_t i) {
  if (id < 0 || id >= n_rows) checks::id_outside_table(id, i, n_rows);
}

}  // namespace

void embedding_gather(const Tensor& table, const Tensor& ids, Tensor& out) {
  checks::table_rows_per_id(table, ids, out, "embedding_gather");
  const int64_t n = ids.numel(), c = table.dim(1), n_rows = table.dim(0);
  const float* src = table.data<float>();
  float* dst = out.data<float>();
  checks::visit_ids(ids, "embedding_gather ids", [&](const auto* id) {
    for (int64_t i = 0; i < n; ++i) {
      check_id(id[i], n_rows, i);
      std::copy_n(src + id[i] * c, c, dst + i * c);
    }
  });
}

void embedding_scatter_add(const Tensor& dout, const Tensor& ids, Tensor& dtable) {
  checks::table_rows_per_id(dtable, ids, dout, "embedding_scatter_add");
  const int64_t n = ids.numel(), c = dtable.dim(1), n_rows = dtable.dim(0);
  const float* src = dout.data<float>();
  float* dst = dtable.data<float>();
  // Sequential over i: every row receives its contributions in ascending i.
  checks::visit_ids(ids, "embedding_scatter_add ids", [&](const auto* id) {
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
  checks::rows_per_id(dout, ids, c, "reduce_rows dout");
  const Tensor keys = Tensor::empty({n}, DType::I64);  // the caching host allocator's: no fresh pages
  int64_t* key = keys.data<int64_t>();
  int64_t max_key = 0;
  checks::visit_ids(ids, "reduce_rows ids", [&](const auto* id) {
    for (int64_t i = 0; i < n; ++i) {
      EG_CHECK(id[i] >= 0, "row id ", id[i], " at position ", i, " is negative");
      key[i] = id[i];
      max_key = std::max(max_key, key[i]);
    }
  });
  // Positions stably ordered by id: equal ids keep ascending i, so each segment sums in i order.
  const Tensor order_tensor = stable_key_order(key, n, max_key);
  const int64_t* order = order_tensor.data<int64_t>();
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
