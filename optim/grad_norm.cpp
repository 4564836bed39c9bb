#include "optim/grad_norm.h"

#include <algorithm>
#include <cmath>

#include "kernels/elementwise.h"
#include "kernels/embedding.h"

namespace engram {

namespace {

// Concatenates the row ids and values of every entry, in list order, then sums duplicate rows.
RowGrads merge(const std::vector<RowGrads>& entries, const std::string& name) {
  const RowGrads& first = entries.front();
  const int64_t cols = first.values.cols();
  int64_t total = 0;
  for (const RowGrads& e : entries) {
    EG_ASSERT(e.values.cols() == cols && e.values.rows() == e.rows.numel(), "row grads of ", name, ": ",
              e.values.describe(), " for ", e.rows.describe(), ", expected ", cols, " columns");
    total += e.rows.numel();
  }
  Tensor rows = Tensor::empty({total}, DType::I64, first.rows.device());
  Tensor values = Tensor::empty({total, cols}, DType::F32, first.values.device());
  int64_t offset = 0;
  for (const RowGrads& e : entries) {
    const int64_t n = e.rows.numel();
    rows.slice(offset, offset + n).copy_from(e.rows.view({n}));
    values.slice(offset, offset + n).copy_from(e.values.view({n, cols}));
    offset += n;
  }
  return kernels::reduce_rows(values, rows);
}

// The tensor p's gradient is counted from: the dense grad, the merged row grads' values, or none.
const Tensor* counted_grad(const Parameter& p) {
  switch (p.group) {
    case OptimGroup::Decay:
    case OptimGroup::NoDecay:
      return &p.grad;
    case OptimGroup::SparseTable:
      EG_ASSERT(p.row_grads.size() <= 1, p.name, " has ", p.row_grads.size(),
                " row-grad entries; call merge_row_grads before global_grad_norm");
      return p.row_grads.empty() ? nullptr : &p.row_grads.front().values;
    case OptimGroup::NotTrained:
      return nullptr;
  }
  return nullptr;
}

}  // namespace

void merge_row_grads(ParameterRegistry& params) {
  for (Parameter* p : params.all()) {
    if (p->group != OptimGroup::SparseTable || p->row_grads.size() <= 1) continue;
    RowGrads merged = merge(p->row_grads, p->name);
    p->row_grads.clear();
    p->row_grads.push_back(std::move(merged));
  }
}

double grad_sum_squares(const std::vector<const Parameter*>& params) {
  std::vector<Tensor> grads;
  for (const Parameter* p : params) {
    if (const Tensor* g = counted_grad(*p)) grads.push_back(*g);
  }
  double sum = 0.0;
  for (const double s : kernels::sum_squares_each(grads)) sum += s;  // in parameter order, as before
  return sum;
}

double global_grad_norm(const ParameterRegistry& params) {
  return std::sqrt(grad_sum_squares({params.all().begin(), params.all().end()}));
}

float clip_factor(double norm, float max_norm) {
  if (max_norm <= 0.0f) return 1.0f;
  return static_cast<float>(std::min(1.0, static_cast<double>(max_norm) / (norm + 1e-6)));
}

}  // namespace engram
