#pragma once
// Global-norm gradient clipping (MODEL.md §6): one L2 norm over every trained parameter, dense
// groups and Engram tables together, turned into one factor that scales all updates alike.
#include <vector>

#include "runtime/parameters.h"

namespace engram {

// Collapses each SparseTable parameter's row_grads (one entry per backward pass) into a single
// RowGrads: a row that several micro-batches touched is summed before anything squares it or
// steps it. Entries are combined in list order; no-op for 0 or 1 entries.
void merge_row_grads(ParameterRegistry& params);

// Σ g² over these parameters' gradients as global_grad_norm counts them (NotTrained ones add 0), in
// double; on the GPU with one wait for all of them. Needs merge_row_grads first.
double grad_sum_squares(const std::vector<const Parameter*>& params);

// sqrt of Σ g² over the dense grads of Decay/NoDecay parameters and the merged row grads of
// SparseTable parameters (each table row once); NotTrained parameters are excluded.
// Needs merge_row_grads first.
double global_grad_norm(const ParameterRegistry& params);

// Factor that brings `norm` down to `max_norm`: min(1, max_norm / (norm + 1e-6)); 1 when
// max_norm <= 0 (clipping disabled).
float clip_factor(double norm, float max_norm);

}  // namespace engram
