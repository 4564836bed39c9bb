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
#include "train/checkpoint_manifest.h"

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
constexpr const char* kShardFormat = "engram-checkpoint-shard-v1";
constexpr const char* kManifestFile = "manifest.json";

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

// ---- what a checkpoint directory stores, in either layout ----

// A checkpoint as lists of tensors whose pieces live in files of `dir`. The consolidated layout is
// the case of one piece per tensor, so one loader serves both layouts and any world size.
struct StoredCheckpoint {
  std::string dir;
  SafetensorsFile description;  // path (manifest or model file) and the model metadata; no tensors
  int64_t step = 0;
  std::vector<ManifestTensor> model, optimizer;
  std::string optimizer_listed_in;               // the file naming the optimizer tensors, for errors
  std::map<std::string, uint32_t> shard_crc32;   // sharded: the CRC-32 the manifest records per file
  std::map<std::string, SafetensorsFile> files;  // files read so far, by name inside `dir`
};

void check_format(const SafetensorsFile& f, const char* format) {
  const std::string& found = f.metadata_value("format");
  EG_CHECK(found == format, f.path, ": format \"", found, "\" is not \"", format, "\"");
}

int64_t stored_step(const SafetensorsFile& f) {
  const int64_t step = f.metadata_int("step");
  EG_CHECK(step >= 0, f.path, ": metadata \"step\" = ", step, " is negative");
  return step;
}

// One single-piece entry per tensor of a consolidated file, in the file's name order.
std::vector<ManifestTensor> whole_tensors(const SafetensorsFile& f, const std::string& file_name) {
  std::vector<ManifestTensor> out;
  for (const auto& [name, t] : f.tensors) {
    EG_CHECK(t.ndim() > 0 && t.dim(0) > 0, f.path, ": tensor \"", name, "\" has no rows");
    out.push_back({name, t.shape(), {{file_name, 0, t.dim(0)}}});
  }
  return out;
}

StoredCheckpoint stored_from_model_file(SafetensorsFile model_file) {
  check_format(model_file, kModelFormat);
  const fs::path path(model_file.path);
  StoredCheckpoint s;
  s.dir = path.parent_path().string();
  s.description = {model_file.path, model_file.metadata, {}};
  s.step = stored_step(model_file);
  s.model = whole_tensors(model_file, path.filename().string());
  s.files.emplace(path.filename().string(), std::move(model_file));
  return s;
}

// Adds the moments of a consolidated optimizer.safetensors beside the model file.
void add_optimizer_file(StoredCheckpoint& s) {
  SafetensorsFile f = read_safetensors(join(s.dir, kOptimizerFile));
  check_format(f, kOptimizerFormat);
  EG_CHECK(stored_step(f) == s.step, f.path, ": step ", stored_step(f), " but ", s.description.path,
           " is at step ", s.step, " (files of different checkpoints)");
  s.optimizer = whole_tensors(f, kOptimizerFile);
  s.optimizer_listed_in = f.path;
  s.files.emplace(kOptimizerFile, std::move(f));
}

StoredCheckpoint stored_from_manifest(const std::string& dir) {
  const std::string path = join(dir, kManifestFile);
  CheckpointManifest m = parse_manifest(read_file(path), path);
  StoredCheckpoint s;
  s.dir = dir;
  s.description.path = path;
  s.description.metadata = std::move(m.metadata);
  s.step = m.step;
  s.model = std::move(m.model);
  s.optimizer = std::move(m.optimizer);
  s.optimizer_listed_in = path;
  s.shard_crc32 = std::move(m.file_crc32);
  return s;
}

// A checkpoint directory of either layout; the consolidated optimizer file is read only when asked.
StoredCheckpoint open_checkpoint(const std::string& dir, bool with_optimizer) {
  if (fs::exists(join(dir, kManifestFile))) return stored_from_manifest(dir);
  EG_CHECK(fs::exists(join(dir, kModelFile)), dir, ": not a checkpoint directory (it has neither ",
           kManifestFile, " nor ", kModelFile, ")");
  StoredCheckpoint s = stored_from_model_file(read_safetensors(join(dir, kModelFile)));
  if (with_optimizer) add_optimizer_file(s);
  return s;
}

// The rows of piece `p` of `t`, reading its file on first use. A shard file must carry the CRC-32 the
// manifest records, which ties it to this checkpoint (not a same-named file of another one).
const Tensor& stored_piece(StoredCheckpoint& s, const ManifestTensor& t, const ManifestPiece& p) {
  auto file = s.files.find(p.file);
  if (file == s.files.end()) {
    SafetensorsFile f = read_safetensors(join(s.dir, p.file));
    const int64_t recorded = s.shard_crc32.at(p.file);
    EG_CHECK(f.metadata_int("crc32") == recorded, f.path, ": CRC-32 ", f.metadata_value("crc32"), " but ",
             s.description.path, " records ", recorded, " (a shard file of another checkpoint?)");
    check_format(f, kShardFormat);
    EG_CHECK(stored_step(f) == s.step, f.path, ": step ", stored_step(f), " but ", s.description.path,
             " is at step ", s.step);
    file = s.files.emplace(p.file, std::move(f)).first;
  }
  const SafetensorsFile& f = file->second;
  auto found = f.tensors.find(t.name);
  EG_CHECK(found != f.tensors.end(), f.path, ": tensor \"", t.name, "\" is missing");
  Shape expected = t.shape;
  expected[0] = p.rows;
  EG_CHECK(found->second.dtype() == DType::F32 && found->second.shape() == expected, f.path, ": tensor \"",
           t.name, "\" is ", dtype_name(found->second.dtype()), shape_str(found->second.shape()), " but ",
           dtype_name(DType::F32), shape_str(expected), " was expected");
  return found->second;
}

// Every tensor of `targets` is stored with its parameter's global shape, and nothing else is: a
// checkpoint that does not describe exactly this model is refused before anything is overwritten.
// `listed_in` names the file that lists `stored`.
void check_tensors(const std::string& listed_in, const std::vector<ManifestTensor>& stored,
                   const SlicedTensors& targets) {
  std::map<std::string, const ManifestTensor*> by_name;
  for (const ManifestTensor& t : stored) by_name[t.name] = &t;
  for (const SlicedTensor& t : targets) {
    auto it = by_name.find(t.name);
    EG_CHECK(it != by_name.end(), listed_in, ": tensor \"", t.name, "\" is missing");
    EG_CHECK(it->second->shape == t.param->global_shape, listed_in, ": tensor \"", t.name, "\" is ",
             shape_str(it->second->shape), " but the model needs ", shape_str(t.param->global_shape));
    by_name.erase(it);
  }
  if (!by_name.empty())
    EG_FAIL(listed_in, ": tensor \"", by_name.begin()->first, "\" is not part of this model");
}

// Copies each target's rows [shard_begin, + local rows) out of the pieces overlapping them. All the
// pieces are read and checked first; only then is anything overwritten.
void restore(StoredCheckpoint& s, const std::vector<ManifestTensor>& stored, SlicedTensors& targets) {
  struct RowCopy {
    Tensor dst;
    const Tensor* src;
    int64_t src_row;
  };
  std::map<std::string, const ManifestTensor*> by_name;
  for (const ManifestTensor& t : stored) by_name[t.name] = &t;
  std::vector<RowCopy> copies;
  for (SlicedTensor& t : targets) {
    const ManifestTensor& st = *by_name.at(t.name);
    const int64_t begin = t.param->shard_begin, end = begin + t.local.dim(0);
    for (const ManifestPiece& p : st.pieces) {
      const int64_t lo = std::max(begin, p.begin), hi = std::min(end, p.begin + p.rows);
      if (lo < hi) copies.push_back({t.local.slice(lo - begin, hi - begin), &stored_piece(s, st, p), lo - p.begin});
    }
  }
  for (RowCopy& c : copies) c.dst.copy_from(c.src->slice(c.src_row, c.src_row + c.dst.dim(0)));
}

// The whole tensors of `stored`, in its order, assembled from their pieces.
NamedTensors assemble(StoredCheckpoint& s, const std::vector<ManifestTensor>& stored) {
  NamedTensors out;
  for (const ManifestTensor& t : stored) {
    Tensor whole = Tensor::empty(t.shape);
    for (const ManifestPiece& p : t.pieces) whole.slice(p.begin, p.begin + p.rows).copy_from(stored_piece(s, t, p));
    out.emplace_back(t.name, whole);
  }
  return out;
}

// ---- writing the sharded layout ----

std::string shard_file_name(const char* kind, int rank, int world) {
  char name[64];
  std::snprintf(name, sizeof name, "%s-%05d-of-%05d.safetensors", kind, rank, world);
  return name;
}

// Whether this rank is the one that stores its rows of `p`, so every value is stored exactly once:
// replicated tensors by world rank 0, expert blocks by the first rank of their expert-data-parallel
// group, table rows by their owner (the table group is the world, whose ranks own disjoint rows).
bool stores(const Parameter& p, ProcessGroups* groups) {
  if (!groups) return true;
  switch (p.shard) {
    case ShardKind::Replicated: return groups->world().rank() == 0;
    case ShardKind::Experts: return groups->layout().edp_rank == 0;
    case ShardKind::Rows: return true;
  }
  return false;
}

// Writes this rank's shard file of `tensors` (none when it stores no rows of them) and returns its
// record: the file's CRC-32 (−1: no file), then (begin, rows) of every tensor, rows 0 where not stored.
std::vector<int64_t> write_shard(const std::string& path, const SlicedTensors& tensors, ProcessGroups* groups,
                                 const std::map<std::string, std::string>& metadata) {
  std::vector<int64_t> record = {-1};
  NamedTensors mine;
  for (const SlicedTensor& t : tensors) {
    const bool stored = stores(*t.param, groups) && t.local.dim(0) > 0;
    if (stored) mine.emplace_back(t.name, t.local);
    record.push_back(stored ? t.param->shard_begin : 0);
    record.push_back(stored ? t.local.dim(0) : 0);
  }
  if (!mine.empty()) record[0] = write_safetensors(path, mine, metadata);
  return record;
}

// Every rank's record, one row per rank in rank order, on world rank 0 (empty elsewhere).
std::vector<std::vector<int64_t>> gather_records(ProcessGroups* groups, const std::vector<int64_t>& record) {
  if (!groups) return {record};
  Communicator& world = groups->world();
  const int64_t width = static_cast<int64_t>(record.size());
  std::vector<int64_t> send_rows(world.size(), 0);
  send_rows[0] = 1;
  const Tensor all = world.all_to_all_v_rows(Tensor::from_vector(record, {1, width}), send_rows,
                                             world.exchange_counts(send_rows));
  std::vector<std::vector<int64_t>> out;
  const std::vector<int64_t> flat = all.to_vector<int64_t>();
  for (int64_t r = 0; r < all.dim(0); ++r) out.emplace_back(flat.begin() + r * width, flat.begin() + (r + 1) * width);
  return out;
}

// The manifest entries of `tensors` from every rank's record; `offset` is where their (begin, rows)
// pairs start in a record. Pieces are listed by first row.
std::vector<ManifestTensor> manifest_tensors(const SlicedTensors& tensors, const char* kind, int world,
                                             const std::vector<std::vector<int64_t>>& records, size_t offset,
                                             std::map<std::string, uint32_t>& file_crc32) {
  std::vector<ManifestTensor> out;
  for (const SlicedTensor& t : tensors) out.push_back({t.name, t.param->global_shape, {}});
  for (int r = 0; r < world; ++r) {
    const std::vector<int64_t>& record = records[r];
    if (record[offset] < 0) continue;  // this rank wrote no file of this kind
    const std::string file = shard_file_name(kind, r, world);
    file_crc32[file] = static_cast<uint32_t>(record[offset]);
    for (size_t i = 0; i < out.size(); ++i)
      if (const int64_t rows = record[offset + 2 + 2 * i]; rows > 0)
        out[i].pieces.push_back({file, record[offset + 1 + 2 * i], rows});
  }
  for (ManifestTensor& t : out)
    std::sort(t.pieces.begin(), t.pieces.end(),
              [](const ManifestPiece& a, const ManifestPiece& b) { return a.begin < b.begin; });
  return out;
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

// ---- checking a stored model against the running one ----

// The stored model metadata (of a manifest or a model file) against `model`, built from `running`:
// model config, compression table and Engram hashing constants.
void check_model_metadata(const SafetensorsFile& description, const ModelConfig& running, const Model& model) {
  const SafetensorsFile& f = description;
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
}

// The model file's metadata (docs/CHECKPOINT.md), step and format aside.
std::map<std::string, std::string> model_metadata(const ExperimentConfig& cfg, const Model& model) {
  return {{"config", config_to_text(cfg)},
          {"vocab_compressed", std::to_string(model.vocab_compressed())},
          {"engram_hashing", hashing_json(model.engram_hashing())},
          {"compression_table", json(model.compress_table().to_vector<int32_t>()).dump()},
          {"data_seed", std::to_string(cfg.data().seed())}};
}

// `metadata` without the entries a writer sets itself.
std::map<std::string, std::string> without_file_entries(std::map<std::string, std::string> metadata) {
  for (const char* key : {"format", "step", "crc32"}) metadata.erase(key);
  return metadata;
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
  ProcessGroups* groups = model.groups();
  const int rank = groups ? groups->world().rank() : 0, world = groups ? groups->world().size() : 1;
  const int64_t step = trainer.steps_done();
  const std::string root = checkpoints_root(run_dir), name = step_dir_name(step), dir = join(root, name);
  ensure_writable_dir(dir);  // every rank: a shared file system holds the run directory

  const SlicedTensors weights = model_tensors(model), moments = moment_tensors(trainer);
  const std::map<std::string, std::string> shard_metadata = {
      {"format", kShardFormat}, {"step", std::to_string(step)}, {"rank", std::to_string(rank)},
      {"world_size", std::to_string(world)}};
  std::vector<int64_t> record =
      write_shard(join(dir, shard_file_name("model", rank, world)), weights, groups, shard_metadata);
  const std::vector<int64_t> moment_record =
      write_shard(join(dir, shard_file_name("optimizer", rank, world)), moments, groups, shard_metadata);
  record.insert(record.end(), moment_record.begin(), moment_record.end());
  const std::vector<std::vector<int64_t>> records = gather_records(groups, record);  // rank 0 only
  if (rank != 0) {
    groups->world().barrier();  // returns once rank 0 has written the manifest
    return dir;
  }

  CheckpointManifest manifest;
  manifest.step = step;
  manifest.world_size = world;
  manifest.expert_parallel = groups ? groups->layout().ep_size : 1;
  manifest.metadata = model_metadata(cfg, model);
  manifest.model = manifest_tensors(weights, "model", world, records, 0, manifest.file_crc32);
  manifest.optimizer =
      manifest_tensors(moments, "optimizer", world, records, 1 + 2 * weights.size(), manifest.file_crc32);
  const std::string manifest_path = join(dir, kManifestFile), text = manifest_to_json(manifest);
  parse_manifest(text, manifest_path);  // never write a manifest the loader would refuse
  // The manifest after every shard, and `latest` last: it only ever names a complete checkpoint.
  write_file_atomic(manifest_path, text);
  write_file_atomic(join(root, "latest"), name + "\n");
  prune_checkpoints(root, cfg.train().keep_checkpoints());
  if (groups) groups->world().barrier();
  return dir;
}

bool has_checkpoint(const std::string& run_dir) { return fs::exists(join(checkpoints_root(run_dir), "latest")); }

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

std::string resolve_checkpoint(const std::string& path, const std::string& option) {
  EG_CHECK(fs::exists(path), option, " ", path, ": no such file or directory");
  if (!fs::is_directory(path) || fs::exists(join(path, kManifestFile)) || fs::exists(join(path, kModelFile)))
    return path;
  EG_CHECK(fs::exists(checkpoints_root(path)), option, " ", path, ": a directory without ", kManifestFile, ", ",
           kModelFile, " or checkpoints/ (expected a model.safetensors file, a checkpoint directory or a run "
           "directory)");
  return latest_checkpoint(path);
}

void load_checkpoint(const std::string& checkpoint_dir, const ExperimentConfig& cfg, Model& model,
                     Trainer& trainer) {
  StoredCheckpoint stored = open_checkpoint(checkpoint_dir, /*with_optimizer=*/true);
  check_model_metadata(stored.description, cfg.model(), model);
  SlicedTensors model_targets = model_tensors(model), moment_targets = moment_tensors(trainer);
  check_tensors(stored.description.path, stored.model, model_targets);
  check_tensors(stored.optimizer_listed_in, stored.optimizer, moment_targets);

  // restore() reads and checks every piece before it copies any.
  SlicedTensors targets = model_targets;
  targets.insert(targets.end(), moment_targets.begin(), moment_targets.end());
  std::vector<ManifestTensor> tensors = stored.model;
  tensors.insert(tensors.end(), stored.optimizer.begin(), stored.optimizer.end());
  restore(stored, tensors, targets);
  trainer.set_steps_done(stored.step);
}

CheckpointInfo read_checkpoint_info(const std::string& path) {
  CheckpointInfo info;
  if (fs::is_directory(path) && fs::exists(join(path, kManifestFile))) {
    StoredCheckpoint stored = stored_from_manifest(path);
    info.file.path = stored.description.path;
    info.file.metadata = stored.description.metadata;
    info.file.metadata["format"] = kModelFormat;
    info.file.metadata["step"] = std::to_string(stored.step);
    for (auto& [name, tensor] : assemble(stored, stored.model)) info.file.tensors.emplace(name, tensor);
  } else {  // a consolidated model file, or the directory holding one
    info.file = read_safetensors(fs::is_directory(path) ? join(path, kModelFile) : path);
  }
  check_format(info.file, kModelFormat);
  info.config = stored_config(info.file);
  info.compression_table = stored_compression_table(info.file, info.config.model().vocab_size());
  info.step = stored_step(info.file);
  return info;
}

void load_model_weights(const SafetensorsFile& model_file, Model& model) {
  StoredCheckpoint stored = stored_from_model_file(model_file);
  check_model_metadata(stored.description, model.config(), model);
  SlicedTensors targets = model_tensors(model);
  check_tensors(stored.description.path, stored.model, targets);
  restore(stored, stored.model, targets);
}

void export_consolidated(const std::string& checkpoint_dir, const std::string& out_dir, bool with_optimizer) {
  StoredCheckpoint stored = open_checkpoint(checkpoint_dir, with_optimizer);
  const NamedTensors weights = assemble(stored, stored.model);
  const NamedTensors moments = with_optimizer ? assemble(stored, stored.optimizer) : NamedTensors{};
  ensure_writable_dir(out_dir);
  std::map<std::string, std::string> metadata = without_file_entries(stored.description.metadata);
  metadata["format"] = kModelFormat;
  metadata["step"] = std::to_string(stored.step);
  write_safetensors(join(out_dir, kModelFile), weights, metadata);
  if (with_optimizer)
    write_safetensors(join(out_dir, kOptimizerFile), moments,
                      {{"format", kOptimizerFormat}, {"step", std::to_string(stored.step)}});
}

}  // namespace engram
