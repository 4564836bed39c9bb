#include "train/checkpoint_manifest.h"

#include <set>

#include <nlohmann/json.hpp>

#include "runtime/error.h"

namespace engram {

namespace {

using nlohmann::ordered_json;

constexpr const char* kManifestFormat = "engram-sharded-checkpoint-v1";

ordered_json tensors_json(const std::vector<ManifestTensor>& tensors) {
  ordered_json out = ordered_json::array();
  for (const ManifestTensor& t : tensors) {
    ordered_json pieces = ordered_json::array();
    for (const ManifestPiece& p : t.pieces)
      pieces.push_back({{"file", p.file}, {"begin", p.begin}, {"rows", p.rows}});
    out.push_back({{"name", t.name}, {"shape", t.shape}, {"pieces", pieces}});
  }
  return out;
}

// Reads `key` of `object` as T; `where` names the object in errors.
template <class T>
T get(const ordered_json& object, const char* key, const std::string& where) {
  auto it = object.find(key);
  EG_CHECK(it != object.end(), where, ": \"", key, "\" is missing");
  if constexpr (std::is_same_v<T, std::string>) {
    EG_CHECK(it->is_string(), where, ": \"", key, "\" is not a string");
  } else if constexpr (std::is_integral_v<T>) {
    EG_CHECK(it->is_number_integer(), where, ": \"", key, "\" is not an integer");
  } else {
    EG_CHECK(it->is_array() || it->is_object(), where, ": \"", key, "\" is not an array or object");
  }
  return it->get<T>();
}

std::vector<ManifestTensor> parse_tensors(const ordered_json& root, const char* key, const std::string& path,
                                          const std::map<std::string, uint32_t>& files,
                                          std::set<std::string>& names) {
  const ordered_json list = get<ordered_json>(root, key, path);
  EG_CHECK(list.is_array(), path, ": \"", key, "\" is not an array");
  std::vector<ManifestTensor> out;
  for (const ordered_json& entry : list) {
    EG_CHECK(entry.is_object(), path, ": an entry of \"", key, "\" is not an object");
    ManifestTensor t;
    t.name = get<std::string>(entry, "name", path + " (" + key + ")");
    const std::string where = path + ": tensor \"" + t.name + "\"";
    EG_CHECK(names.insert(t.name).second, where, " is listed twice");
    t.shape = get<std::vector<int64_t>>(entry, "shape", where);
    EG_CHECK(!t.shape.empty(), where, ": an empty shape (scalars are not stored)");
    for (int64_t d : t.shape) EG_CHECK(d >= 0, where, ": negative dimension ", d);
    int64_t next_row = 0;  // pieces must tile [0, rows) in order
    for (const ordered_json& piece : get<ordered_json>(entry, "pieces", where)) {
      ManifestPiece p{get<std::string>(piece, "file", where), get<int64_t>(piece, "begin", where),
                      get<int64_t>(piece, "rows", where)};
      EG_CHECK(p.begin == next_row && p.rows > 0, where, ": pieces do not tile rows [0, ", t.shape[0],
               ") (a piece starts at row ", p.begin, " with ", p.rows, " rows; expected row ", next_row, ")");
      EG_CHECK(files.count(p.file), where, ": piece file \"", p.file, "\" is not listed in \"files\"");
      next_row += p.rows;
      t.pieces.push_back(std::move(p));
    }
    EG_CHECK(next_row == t.shape[0], where, ": pieces cover ", next_row, " of its ", t.shape[0], " rows");
    out.push_back(std::move(t));
  }
  return out;
}

}  // namespace

std::string manifest_to_json(const CheckpointManifest& m) {
  ordered_json files = ordered_json::object();
  for (const auto& [file, crc] : m.file_crc32) files[file] = {{"crc32", crc}};
  ordered_json root = {{"format", kManifestFormat},
                       {"step", m.step},
                       {"world_size", m.world_size},
                       {"expert_parallel", m.expert_parallel},
                       {"metadata", m.metadata},
                       {"files", files},
                       {"model", tensors_json(m.model)},
                       {"optimizer", tensors_json(m.optimizer)}};
  return root.dump(1) + "\n";
}

CheckpointManifest parse_manifest(const std::string& text, const std::string& path) {
  const ordered_json root = ordered_json::parse(text, nullptr, /*allow_exceptions=*/false);
  EG_CHECK(root.is_object(), path, ": not a JSON object (a checkpoint manifest was expected)");
  const std::string format = get<std::string>(root, "format", path);
  EG_CHECK(format == kManifestFormat, path, ": format \"", format, "\" is not \"", kManifestFormat, "\"");

  CheckpointManifest m;
  m.step = get<int64_t>(root, "step", path);
  EG_CHECK(m.step >= 0, path, ": \"step\" = ", m.step, " is negative");
  m.world_size = get<int>(root, "world_size", path);
  m.expert_parallel = get<int>(root, "expert_parallel", path);
  const ordered_json metadata = get<ordered_json>(root, "metadata", path);
  for (const auto& [key, value] : metadata.items()) {
    EG_CHECK(value.is_string(), path, ": metadata \"", key, "\" is not a string");
    m.metadata[key] = value.get<std::string>();
  }
  const ordered_json files = get<ordered_json>(root, "files", path);
  for (const auto& [file, entry] : files.items()) {
    EG_CHECK(file.find('/') == std::string::npos && !file.empty() && file[0] != '.', path, ": file name \"",
             file, "\" is not a plain name inside the checkpoint directory");
    const int64_t crc = get<int64_t>(entry, "crc32", path + ": file \"" + file + "\"");
    EG_CHECK(crc >= 0 && crc <= 0xffffffffLL, path, ": file \"", file, "\": crc32 ", crc, " is not 32-bit");
    m.file_crc32[file] = static_cast<uint32_t>(crc);
  }
  std::set<std::string> names;
  m.model = parse_tensors(root, "model", path, m.file_crc32, names);
  m.optimizer = parse_tensors(root, "optimizer", path, m.file_crc32, names);
  return m;
}

}  // namespace engram
