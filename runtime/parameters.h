#pragma once
// Parameter registry: every trainable or checkpointed tensor of a model, under its MODEL.md §7
// name, with its global (unsharded) shape, the slice this rank holds, its optimizer group and
// its init. Optimizers, checkpoints and gradient synchronization all walk this registry.
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "runtime/init.h"
#include "runtime/row_grads.h"
#include "runtime/tensor.h"

namespace engram {

enum class OptimGroup {
  Decay,        // AdamW with weight decay: 2-D and 3-D weight matrices
  NoDecay,      // AdamW without decay: norm gains, biases, conv weights
  SparseTable,  // lazy row-sparse Adam, LR × table_lr_mult, no decay: Engram tables
  NotTrained,   // updated by a rule, not by gradients: MoE balancing biases
};
const char* optim_group_name(OptimGroup group);

// How dimension 0 is split across ranks (later issues); a single rank holds everything.
enum class ShardKind {
  Replicated,  // every rank holds the whole tensor
  Experts,     // dim 0 (experts) split in contiguous blocks over the expert-parallel group
  Rows,        // dim 0 (table rows) split in contiguous ranges over the table group
};

struct Parameter {
  std::string name;
  Shape global_shape;
  int64_t shard_begin = 0;   // first dim-0 index held by this rank
  Tensor value;              // local slice [shard rows, ...]
  Tensor grad;               // dense gradient, same shape as value (undefined for SparseTable)
  std::vector<RowGrads> row_grads;     // SparseTable: one entry per backward, local row ids
  OptimGroup group = OptimGroup::Decay;
  ShardKind shard = ShardKind::Replicated;
  InitSpec init;

  int64_t global_numel() const { return shape_numel(global_shape); }
  // Flat offset of the local slice's first element inside the full tensor.
  int64_t flat_offset() const;
};

class ParameterRegistry {
 public:
  // Registers a parameter holding dim-0 rows [shard_begin, shard_begin + shard_rows) of the
  // global shape (shard_rows < 0: all rows). Allocates value (and grad unless SparseTable or NotTrained).
  Parameter& add(const std::string& name, const Shape& global_shape, OptimGroup group, const InitSpec& init,
                 ShardKind shard = ShardKind::Replicated, int64_t shard_begin = 0, int64_t shard_rows = -1);

  Parameter& get(const std::string& name);
  const Parameter& get(const std::string& name) const;
  bool contains(const std::string& name) const { return index_.count(name) > 0; }

  // In registration order (the model's order: embeddings, layers, final norm, head).
  std::vector<Parameter*>& all() { return params_ptrs_; }
  const std::vector<Parameter*>& all() const { return params_ptrs_; }

  void initialize(uint64_t seed);  // MODEL.md §5, slice by slice
  void move_to(Device device);     // values and dense gradients (row grads must be empty)
  void zero_grads();               // dense grads to 0, sparse row grads cleared
  int64_t local_numel() const;

 private:
  std::vector<std::unique_ptr<Parameter>> params_;
  std::vector<Parameter*> params_ptrs_;
  std::map<std::string, size_t> index_;
};

}  // namespace engram
