#pragma once
// Row-sparse gradient of a table: the distinct rows that received gradient, ascending, and the
// sum of the gradients sent to each (Engram tables; made by kernels::reduce_rows).
#include "runtime/tensor.h"

namespace engram {

struct RowGrads {
  Tensor rows;    // i64 [U], strictly ascending
  Tensor values;  // f32 [U, C]
};

}  // namespace engram
