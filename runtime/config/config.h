#pragma once
// Loading and validating experiment configs (protobuf text format). Every error names the
// file (with line and column for syntax errors) or the field path and the rule it broke.
#include <string>
#include <vector>

#include "runtime/config/engram.pb.h"
#include "runtime/error.h"

namespace engram {

using config::ExperimentConfig;
using config::ModelConfig;

// Parses text format into `msg` (any message type: experiment and sweep configs share it); `source`
// names the text in error messages ("<source>:<line>:<column>: ..."). Does not validate.
void parse_text_message(const std::string& text, const std::string& source, google::protobuf::Message& msg);
ExperimentConfig parse_config_text(const std::string& text, const std::string& source);

// Applies `field.path=value` overrides (e.g. "model.d_model=128", "model.engram.layers=[1,3]") to
// any message. A repeated field is replaced as a whole.
void apply_overrides(google::protobuf::Message& cfg, const std::vector<std::string>& overrides);

// Throws engram::Error naming the first field that breaks a rule, e.g.
// "model.moe.top_k = 9 must be <= model.moe.n_routed_experts (8)".
void validate_config(const ExperimentConfig& cfg);
void validate_model_config(const ModelConfig& model);  // model section only, paths "model.*"

// Reads, applies overrides, validates.
ExperimentConfig load_config(const std::string& path, const std::vector<std::string>& overrides = {});

// Serializes to text format (used for checkpoint metadata and run directories).
std::string config_to_text(const google::protobuf::Message& msg);

// Derived quantities with defaults resolved.
inline bool has_moe(const ModelConfig& m) { return m.n_dense_layers() < m.n_layers(); }
inline bool has_engram(const ModelConfig& m) { return m.has_engram() && m.engram().layers_size() > 0; }
inline int engram_pad_id(const ModelConfig& m) {
  return m.engram().pad_id() >= 0 ? m.engram().pad_id() : m.eos_id();
}
inline int head_dim(const ModelConfig& m) { return m.d_model() / m.n_heads(); }
// parallel.grad_bucket_mb in bytes: the size of the dense gradient buckets.
inline int64_t grad_bucket_bytes(const config::ParallelConfig& p) { return int64_t{p.grad_bucket_mb()} << 20; }

}  // namespace engram
