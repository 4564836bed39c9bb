#include "train/checkpoint.h"

#include <google/protobuf/descriptor.h>
#include <google/protobuf/text_format.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <filesystem>
#include <optional>
#include <set>

#include <nlohmann/json.hpp>

#include "parallel/process_groups.h"
#include "runtime/atomic_file.h"
#include "runtime/safetensors.h"

namespace engram {

namespace {

namespace fs = std::filesystem;
using google::protobuf::FieldDescriptor;
using google::protobuf::Message;
using nlohmann::json;

constexpr const char* kModelFormat = "engram-checkpoint-v1";
constexpr const char* kOptimizerFormat = "engram-optimizer-v1";
constexpr const char* kModelFile = "model.safetensors";
constexpr const char* kOptimizerFile = "optimizer.safetensors";

std::string join(const std::string& dir, const std::string& name) { return (fs::path(dir) / name).string(); }
std::string checkpoints_root(const std::string& run_dir) { return join(run_dir, "checkpoints"); }

std::string step_dir_name(int64_t step) {
  char name[32];
  std::snprintf(name, sizeof name, "step_%08lld", static_cast<long long>(step));
  return name;
}

// ---- tensors: the same lists name what is saved and where a load writes ----

// A checkpoint tensor: this rank's slice of a parameter or of one of its Adam moments, which are
// sharded like the parameter (dim-0 rows [param->shard_begin, + local rows) of param->global_shape).
struct SlicedTensor {
  std::string name;
  const Parameter* param;
  Tensor local;
};
using SlicedTensors = std::vector<SlicedTensor>;

// Every registry parameter under its MODEL.md §7 name, in registration order.
SlicedTensors model_tensors(const Model& model) {
  SlicedTensors out;
  for (const Parameter* p : model.params().all()) out.push_back({p->name, p, p->value});
  return out;
}

// "<optimizer>.m.<name>" and "<optimizer>.v.<name>" of every parameter of both optimizers.
SlicedTensors moment_tensors(const Trainer& trainer) {
  const std::pair<const char*, const MomentOptimizer*> optimizers[] = {{"adamw", &trainer.adamw()},
                                                                       {"sparse_adam", &trainer.sparse_adam()}};
  SlicedTensors out;
  for (const auto& [prefix, optimizer] : optimizers)
    for (const Parameter* p : optimizer->parameters()) {
      const MomentState& s = optimizer->state().at(p->name);
      out.push_back({std::string(prefix) + ".m." + p->name, p, s.m});
      out.push_back({std::string(prefix) + ".v." + p->name, p, s.v});
    }
  return out;
}

// The rows of `local` of every rank of `group`, concatenated in rank order, on the group's rank 0
// (empty elsewhere). Collective over the group.
Tensor gather_rows_to_root(Communicator& group, const Tensor& local) {
  std::vector<int64_t> send_rows(group.size(), 0);
  send_rows[0] = local.dim(0);
  return group.all_to_all_v_rows(local, send_rows, group.exchange_counts(send_rows));
}

// The whole tensors, in the consolidated single-file layout, on world rank 0 (a single process has
// them already). Expert blocks are gathered over the expert-parallel group holding world rank 0, table
// rows over the table group: both hold contiguous ranges in rank order. Collective over the world.
NamedTensors consolidate(const SlicedTensors& tensors, ProcessGroups* groups) {
  NamedTensors out;
  for (const SlicedTensor& t : tensors) {
    if (!groups || t.param->shard == ShardKind::Replicated) {
      out.emplace_back(t.name, t.local);
      continue;
    }
    Communicator& group =
        t.param->shard == ShardKind::Experts ? groups->expert_parallel() : groups->table();
    Tensor whole = gather_rows_to_root(group, t.local);
    if (groups->world().rank() == 0) {
      EG_ASSERT(whole.shape() == t.param->global_shape, "gathered ", t.name, " is ", shape_str(whole.shape()),
                ", expected ", shape_str(t.param->global_shape));
      out.emplace_back(t.name, whole);
    }
  }
  return out;
}

// Every tensor of `targets` present in the file as f32 with its parameter's global shape, and nothing
// else: a file that does not describe exactly this model is refused before anything is overwritten.
void check_tensors(const SafetensorsFile& f, const SlicedTensors& targets) {
  std::set<std::string> expected;
  for (const SlicedTensor& t : targets) {
    expected.insert(t.name);
    auto it = f.tensors.find(t.name);
    EG_CHECK(it != f.tensors.end(), f.path, ": tensor \"", t.name, "\" is missing");
    const Tensor& found = it->second;
    EG_CHECK(found.dtype() == DType::F32 && found.shape() == t.param->global_shape, f.path, ": tensor \"",
             t.name, "\" is ", dtype_name(found.dtype()), shape_str(found.shape()), " but the model needs ",
             dtype_name(DType::F32), shape_str(t.param->global_shape));
  }
  for (const auto& entry : f.tensors)
    EG_CHECK(expected.count(entry.first), f.path, ": tensor \"", entry.first, "\" is not part of this model");
}

// Copies each target's rows out of the whole tensor in the file (any world size loads any checkpoint).
void restore(const SafetensorsFile& f, SlicedTensors& targets) {
  for (SlicedTensor& t : targets) {
    const int64_t begin = t.param->shard_begin;
    t.local.copy_from(f.tensors.at(t.name).slice(begin, begin + t.local.dim(0)));
  }
}

// ---- metadata ----

std::string hashing_json(const std::vector<EngramLayerHash>& hashing) {
  json layers = json::array();
  for (const EngramLayerHash& h : hashing) {
    json multipliers = json::array();  // decimal strings: u64 values do not survive JSON doubles
    for (uint64_t m : h.multipliers) multipliers.push_back(std::to_string(m));
    layers.push_back({{"layer", h.layer},
                      {"multipliers", multipliers},
                      {"primes", h.primes},
                      {"offsets", h.offsets},
                      {"rows", h.rows}});
  }
  return layers.dump();
}

void check_format(const SafetensorsFile& f, const char* format) {
  const std::string& found = f.metadata_value("format");
  EG_CHECK(found == format, f.path, ": format \"", found, "\" is not \"", format, "\"");
}

ExperimentConfig stored_config(const SafetensorsFile& f) {
  return parse_config_text(f.metadata_value("config"), f.path + " (metadata \"config\")");
}

// The compression table V' the checkpoint records: a JSON array of `vocab` ids in [0, vocab).
std::vector<int32_t> stored_compression_table(const SafetensorsFile& f, int64_t vocab) {
  const json stored = json::parse(f.metadata_value("compression_table"), nullptr, /*allow_exceptions=*/false);
  EG_CHECK(stored.is_array() && static_cast<int64_t>(stored.size()) == vocab, f.path,
           ": metadata \"compression_table\" is not a JSON array of ", vocab, " ids (model.vocab_size)");
  std::vector<int32_t> table;
  table.reserve(stored.size());
  for (const json& id : stored) {
    EG_CHECK(id.is_number_integer() && id.get<int64_t>() >= 0 && id.get<int64_t>() < vocab, f.path,
             ": metadata \"compression_table\" holds ", id.dump(), ", not an id in [0, ", vocab, ")");
    table.push_back(id.get<int32_t>());
  }
  return table;
}

int64_t stored_step(const SafetensorsFile& f) {
  const int64_t step = f.metadata_int("step");
  EG_CHECK(step >= 0, f.path, ": metadata \"step\" = ", step, " is negative");
  return step;
}

// ---- config comparison ----

struct FieldDifference {
  std::string path, stored, running;
};

// A field's value in text format, defaults resolved (index -1: singular; repeated: the whole list).
std::string field_text(const Message& m, const FieldDescriptor* f) {
  std::string text;
  if (!f->is_repeated()) {
    google::protobuf::TextFormat::PrintFieldValueToString(m, f, -1, &text);
    return text;
  }
  text = "[";
  for (int i = 0; i < m.GetReflection()->FieldSize(m, f); ++i) {
    std::string element;
    google::protobuf::TextFormat::PrintFieldValueToString(m, f, i, &element);
    text += (i > 0 ? ", " : "") + element;
  }
  return text + "]";
}

// The first field, in declaration order and depth first, whose value differs. Unset fields count as
// their defaults, so a config that spells out a default equals one that leaves it out.
std::optional<FieldDifference> first_difference(const Message& stored, const Message& running,
                                                 const std::string& path) {
  const google::protobuf::Descriptor* descriptor = stored.GetDescriptor();
  for (int i = 0; i < descriptor->field_count(); ++i) {
    const FieldDescriptor* f = descriptor->field(i);
    const std::string field_path = path + "." + f->name();
    if (!f->is_repeated() && f->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE) {
      auto d = first_difference(stored.GetReflection()->GetMessage(stored, f),
                                running.GetReflection()->GetMessage(running, f), field_path);
      if (d) return d;
      continue;
    }
    std::string a = field_text(stored, f), b = field_text(running, f);
    if (a != b) return FieldDifference{field_path, std::move(a), std::move(b)};
  }
  return std::nullopt;
}

// ---- the model file ----

// Checks a model.safetensors file against `model`, built from `running`: format, model config,
// compression table, Engram hashing constants, and every parameter with its shape.
void check_model_file(const SafetensorsFile& f, const ModelConfig& running, const Model& model) {
  check_format(f, kModelFormat);
  if (auto d = first_difference(stored_config(f).model(), running, "model"))
    EG_FAIL(f.path, ": checkpoint of another config: ", d->path, " is ", d->stored, " in the checkpoint but ",
            d->running, " in the running config");

  // Engram rows are indexed through the compression table: weights trained with another table
  // (another tokenizer) would be read at the wrong rows.
  const std::vector<int32_t> compress = model.compress_table().to_vector<int32_t>();
  const std::vector<int32_t> stored = stored_compression_table(f, static_cast<int64_t>(compress.size()));
  for (size_t id = 0; id < compress.size(); ++id)
    EG_CHECK(stored[id] == compress[id], f.path, ": the compression table maps raw id ", id, " to ",
             stored[id], " but the model's maps it to ", compress[id],
             " (the tokenizer's compression table is not the one this checkpoint was trained with)");
  EG_CHECK(f.metadata_value("engram_hashing") == hashing_json(model.engram_hashing()), f.path,
           ": the Engram hashing constants (multipliers, primes, offsets) differ from the ones this model "
           "computes from the same config");

  check_tensors(f, model_tensors(model));
}

}  // namespace

// Removes all but the newest `keep` step directories (0 keeps all). Runs after `latest` names the
// newest, so a crash mid-way leaves only extra old checkpoints, never a missing newest one.
static void prune_checkpoints(const std::string& root, int keep) {
  if (keep <= 0) return;
  std::vector<std::string> steps;  // zero-padded names: lexicographic order is step order
  for (const auto& entry : fs::directory_iterator(root))
    if (entry.is_directory() && entry.path().filename().string().rfind("step_", 0) == 0)
      steps.push_back(entry.path().string());
  std::sort(steps.begin(), steps.end());
  for (size_t i = 0; i + static_cast<size_t>(keep) < steps.size(); ++i) {
    std::error_code ec;
    fs::remove_all(steps[i], ec);
    EG_CHECK(!ec, steps[i], ": cannot remove an old checkpoint (", ec.message(), ")");
  }
}

std::string save_checkpoint(const std::string& run_dir, const ExperimentConfig& cfg, const Model& model,
                            const Trainer& trainer) {
  // A sharded model is gathered to world rank 0, which alone writes (the consolidated format).
  ProcessGroups* groups = model.groups();
  const NamedTensors weights = consolidate(model_tensors(model), groups);
  const NamedTensors moments = consolidate(moment_tensors(trainer), groups);
  const int64_t step = trainer.steps_done();
  const std::string root = checkpoints_root(run_dir), name = step_dir_name(step), dir = join(root, name);
  if (groups && groups->world().rank() != 0) {
    groups->world().barrier();  // returns once rank 0 has written the checkpoint
    return dir;
  }
  ensure_writable_dir(dir);

  write_safetensors(join(dir, kModelFile), weights,
                    {{"format", kModelFormat},
                     {"config", config_to_text(cfg)},
                     {"vocab_compressed", std::to_string(model.vocab_compressed())},
                     {"engram_hashing", hashing_json(model.engram_hashing())},
                     {"compression_table", json(model.compress_table().to_vector<int32_t>()).dump()},
                     {"step", std::to_string(step)},
                     {"data_seed", std::to_string(cfg.data().seed())}});
  write_safetensors(join(dir, kOptimizerFile), moments,
                    {{"format", kOptimizerFormat}, {"step", std::to_string(step)}});
  // Last, so that `latest` only ever names a complete checkpoint.
  write_file_atomic(join(root, "latest"), name + "\n");
  prune_checkpoints(root, cfg.train().keep_checkpoints());
  if (groups) groups->world().barrier();
  return dir;
}

std::string latest_checkpoint(const std::string& run_dir) {
  const std::string root = checkpoints_root(run_dir), pointer = join(root, "latest");
  EG_CHECK(fs::exists(pointer), run_dir, ": no checkpoint to resume from (", pointer, " does not exist)");
  std::string name = read_file(pointer);
  while (!name.empty() && std::isspace(static_cast<unsigned char>(name.back()))) name.pop_back();
  EG_CHECK(!name.empty() && name.find('/') == std::string::npos, pointer,
           ": does not name a checkpoint directory (holds \"", name, "\")");
  const std::string dir = join(root, name);
  EG_CHECK(fs::is_directory(dir), pointer, ": names ", name, " but ", dir, " is not a directory");
  return dir;
}

void load_checkpoint(const std::string& checkpoint_dir, const ExperimentConfig& cfg, Model& model,
                     Trainer& trainer) {
  const SafetensorsFile weights = read_safetensors(join(checkpoint_dir, kModelFile));
  const SafetensorsFile moments = read_safetensors(join(checkpoint_dir, kOptimizerFile));
  check_model_file(weights, cfg.model(), model);
  check_format(moments, kOptimizerFormat);
  const int64_t step = stored_step(weights);
  EG_CHECK(stored_step(moments) == step, moments.path, ": step ", stored_step(moments), " but ", weights.path,
           " is at step ", step, " (files of different checkpoints)");
  SlicedTensors model_targets = model_tensors(model), moment_targets = moment_tensors(trainer);
  check_tensors(moments, moment_targets);

  // Everything is checked: only now are the model and the optimizers overwritten.
  restore(weights, model_targets);
  restore(moments, moment_targets);
  trainer.set_steps_done(step);
}

CheckpointInfo read_checkpoint_info(const std::string& model_file) {
  CheckpointInfo info;
  info.file = read_safetensors(model_file);
  check_format(info.file, kModelFormat);
  info.config = stored_config(info.file);
  info.compression_table = stored_compression_table(info.file, info.config.model().vocab_size());
  info.step = stored_step(info.file);
  return info;
}

void load_model_weights(const SafetensorsFile& model_file, Model& model) {
  check_model_file(model_file, model.config(), model);
  SlicedTensors targets = model_tensors(model);
  restore(model_file, targets);
}

}  // namespace engram
