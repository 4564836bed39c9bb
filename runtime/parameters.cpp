#include "runtime/parameters.h"

namespace engram {

const char* optim_group_name(OptimGroup group) {
  switch (group) {
    case OptimGroup::Decay: return "decay";
    case OptimGroup::NoDecay: return "no_decay";
    case OptimGroup::SparseTable: return "sparse_table";
    case OptimGroup::NotTrained: return "not_trained";
  }
  return "?";
}

int64_t Parameter::flat_offset() const {
  const int64_t row = global_shape.empty() || global_shape[0] == 0 ? 0 : global_numel() / global_shape[0];
  return shard_begin * row;
}

Parameter& ParameterRegistry::add(const std::string& name, const Shape& global_shape, OptimGroup group,
                                  const InitSpec& init, ShardKind shard, int64_t shard_begin, int64_t shard_rows) {
  EG_ASSERT(!contains(name), "parameter registered twice: ", name);
  EG_ASSERT(!global_shape.empty(), "scalar parameter: ", name);
  if (shard_rows < 0) shard_rows = global_shape[0] - shard_begin;
  EG_ASSERT(shard_begin >= 0 && shard_begin + shard_rows <= global_shape[0], "shard of ", name);
  auto p = std::make_unique<Parameter>();
  p->name = name;
  p->global_shape = global_shape;
  p->shard_begin = shard_begin;
  p->group = group;
  p->shard = shard;
  p->init = init;
  Shape local = global_shape;
  local[0] = shard_rows;
  p->value = Tensor::zeros(local);
  if (group == OptimGroup::Decay || group == OptimGroup::NoDecay) p->grad = Tensor::zeros(local);
  index_[name] = params_.size();
  params_ptrs_.push_back(p.get());
  params_.push_back(std::move(p));
  return *params_.back();
}

Parameter& ParameterRegistry::get(const std::string& name) {
  auto it = index_.find(name);
  EG_CHECK(it != index_.end(), "unknown parameter '", name, "'");
  return *params_[it->second];
}

const Parameter& ParameterRegistry::get(const std::string& name) const {
  auto it = index_.find(name);
  EG_CHECK(it != index_.end(), "unknown parameter '", name, "'");
  return *params_[it->second];
}

void ParameterRegistry::initialize(uint64_t seed) {
  for (Parameter* p : params_ptrs_) init_parameter(p->value, seed, p->name, p->init, p->flat_offset());
}

void ParameterRegistry::move_to(Device device) {
  for (Parameter* p : params_ptrs_) {
    EG_ASSERT(p->row_grads.empty(), p->name, ": moved with pending row gradients");
    p->value = p->value.to(device);
    if (p->grad.defined()) p->grad = p->grad.to(device);
  }
}

void ParameterRegistry::zero_grads() {
  for (Parameter* p : params_ptrs_) {
    if (p->grad.defined()) p->grad.zero_();
    p->row_grads.clear();
  }
}

int64_t ParameterRegistry::local_numel() const {
  int64_t n = 0;
  for (const Parameter* p : params_ptrs_) n += p->value.numel();
  return n;
}

}  // namespace engram
