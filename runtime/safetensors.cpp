#include "runtime/safetensors.h"

#include <algorithm>
#include <bit>
#include <charconv>
#include <filesystem>
#include <fstream>
#include <limits>

#include <nlohmann/json.hpp>

#include "runtime/atomic_file.h"
#include "runtime/checksum.h"

namespace engram {

// The format is little-endian; tensors and the header length are written as they lie in memory.
static_assert(std::endian::native == std::endian::little, "safetensors I/O assumes a little-endian host");

namespace {

using nlohmann::json;

constexpr const char* kMetadataKey = "__metadata__";
constexpr const char* kCrcKey = "crc32";
// The reference implementation refuses headers above 100 MB; so do we (a damaged length field
// would otherwise ask for an absurd allocation).
constexpr uint64_t kMaxHeaderBytes = 100'000'000;

const char* safetensors_dtype(DType dtype) {
  switch (dtype) {
    case DType::F32: return "F32";
    case DType::I32: return "I32";
    case DType::I64: return "I64";
    default: return nullptr;
  }
}

bool parse_dtype(const std::string& name, DType& dtype) {
  for (DType d : {DType::F32, DType::I32, DType::I64})
    if (name == safetensors_dtype(d)) {
      dtype = d;
      return true;
    }
  return false;
}

// One tensor entry of the header, validated against itself (not yet against its neighbours).
struct Entry {
  std::string name;
  DType dtype = DType::F32;
  Shape shape;
  uint64_t begin = 0, end = 0;
};

Entry parse_entry(const std::string& path, const std::string& name, const json& j) {
  const std::string where = path + ": tensor \"" + name + "\"";
  EG_CHECK(j.is_object() && j.contains("dtype") && j.contains("shape") && j.contains("data_offsets"), where,
           ": header entry must be an object with \"dtype\", \"shape\" and \"data_offsets\", got ", j.dump());
  Entry e;
  e.name = name;
  EG_CHECK(j["dtype"].is_string() && parse_dtype(j["dtype"].get<std::string>(), e.dtype), where, ": dtype ",
           j["dtype"].dump(), " is not supported (F32, I32 or I64 expected)");
  const json& shape = j["shape"];
  EG_CHECK(shape.is_array(), where, ": shape must be an array, got ", shape.dump());
  // numel · dtype size must equal the byte range, which fits in a file; bound each product so that
  // a damaged shape cannot overflow.
  const uint64_t max_bytes = static_cast<uint64_t>(std::numeric_limits<int64_t>::max());
  uint64_t bytes = dtype_size(e.dtype);
  for (const json& dim : shape) {
    EG_CHECK(dim.is_number_unsigned(), where, ": shape ", shape.dump(), " must hold non-negative integers");
    const uint64_t d = dim.get<uint64_t>();
    EG_CHECK(d == 0 || bytes <= max_bytes / d, where, ": shape ", shape.dump(), " is impossibly large");
    bytes *= d;
    e.shape.push_back(static_cast<int64_t>(d));
  }
  const json& offsets = j["data_offsets"];
  EG_CHECK(offsets.is_array() && offsets.size() == 2 && offsets[0].is_number_unsigned() &&
               offsets[1].is_number_unsigned(),
           where, ": data_offsets must be [begin, end] of non-negative integers, got ", offsets.dump());
  e.begin = offsets[0].get<uint64_t>();
  e.end = offsets[1].get<uint64_t>();
  EG_CHECK(e.begin <= e.end && e.end - e.begin == bytes, where, ": data_offsets ", offsets.dump(), " span ",
           e.end - e.begin, " bytes but dtype ", safetensors_dtype(e.dtype), " and shape ", shape.dump(),
           " need ", bytes);
  return e;
}

// The offsets must tile [0, data_bytes) exactly: sorted by begin, each tensor starts where the
// previous one ended and the last ends at the end of the file.
void check_tiling(const std::string& path, std::vector<Entry>& entries, uint64_t data_bytes) {
  std::sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  uint64_t expected_begin = 0;
  for (const Entry& e : entries) {
    EG_CHECK(e.begin == expected_begin, path, ": tensor \"", e.name, "\" starts at data offset ", e.begin,
             " but the previous tensor ends at ", expected_begin,
             e.begin < expected_begin ? " (overlapping tensors)" : " (gap in the data section)");
    expected_begin = e.end;
  }
  EG_CHECK(expected_begin == data_bytes, path, ": the header describes ", expected_begin,
           " bytes of tensor data but the file holds ", data_bytes,
           expected_begin > data_bytes ? " (file truncated)" : " (trailing bytes)");
}

}  // namespace

uint32_t write_safetensors(const std::string& path, const NamedTensors& given,
                           std::map<std::string, std::string> metadata) {
  EG_ASSERT(!metadata.count(kCrcKey), "the safetensors writer adds \"crc32\" itself");
  NamedTensors tensors;  // device tensors are written from a host copy
  for (const auto& [name, t] : given) tensors.emplace_back(name, t.to(Device::CPU));
  json header = json::object();
  uint64_t offset = 0;
  uint32_t crc = 0;
  for (const auto& [name, t] : tensors) {
    EG_ASSERT(safetensors_dtype(t.dtype()) != nullptr, "cannot write ", name, " (", t.describe(),
              ") to safetensors");
    EG_ASSERT(name != kMetadataKey && !header.contains(name), "tensor name ", name, " is reserved or repeated");
    header[name] = {{"dtype", safetensors_dtype(t.dtype())},
                    {"shape", t.shape()},
                    {"data_offsets", json::array({offset, offset + t.nbytes()})}};
    crc = crc32(t.raw(), t.nbytes(), crc);
    offset += t.nbytes();
  }
  metadata[kCrcKey] = std::to_string(crc);
  header[kMetadataKey] = metadata;

  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // the data section starts 8-byte aligned, as the spec allows
  const uint64_t header_bytes = text.size();
  AtomicFile file(path);
  file.write(&header_bytes, sizeof header_bytes);
  file.write(text);
  for (const auto& entry : tensors) file.write(entry.second.raw(), entry.second.nbytes());
  file.commit();
  return crc;
}

const std::string& SafetensorsFile::metadata_value(const std::string& key) const {
  auto it = metadata.find(key);
  EG_CHECK(it != metadata.end(), path, ": metadata has no \"", key, "\" entry");
  return it->second;
}

int64_t SafetensorsFile::metadata_int(const std::string& key) const {
  const std::string& text = metadata_value(key);
  int64_t value = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  EG_CHECK(ec == std::errc() && end == text.data() + text.size() && !text.empty(), path, ": metadata \"", key,
           "\" = \"", text, "\" is not a decimal integer");
  return value;
}

SafetensorsFile read_safetensors(const std::string& path) {
  std::error_code ec;
  const uint64_t file_bytes = std::filesystem::file_size(path, ec);
  EG_CHECK(!ec, path, ": cannot read safetensors file (", ec.message(), ")");
  std::ifstream in(path, std::ios::binary);
  EG_CHECK(in.good(), path, ": cannot open safetensors file for reading");
  EG_CHECK(file_bytes >= 8, path, ": truncated safetensors file (", file_bytes,
           " bytes; the 8-byte header length alone needs more)");

  uint64_t header_bytes = 0;
  in.read(reinterpret_cast<char*>(&header_bytes), sizeof header_bytes);
  EG_CHECK(header_bytes <= file_bytes - 8 && header_bytes <= kMaxHeaderBytes, path, ": header length ",
           header_bytes, " does not fit the file of ", file_bytes,
           " bytes (truncated, or not a safetensors file)");
  std::string text(header_bytes, '\0');
  in.read(text.data(), static_cast<std::streamsize>(header_bytes));
  EG_CHECK(in.good(), path, ": read of the ", header_bytes, "-byte header failed");
  const json header = json::parse(text, nullptr, /*allow_exceptions=*/false);
  EG_CHECK(!header.is_discarded() && header.is_object(), path, ": header is not a JSON object (file corrupt)");

  SafetensorsFile file;
  file.path = path;
  std::vector<Entry> entries;
  for (const auto& [key, value] : header.items()) {
    if (key != kMetadataKey) {
      entries.push_back(parse_entry(path, key, value));
      continue;
    }
    EG_CHECK(value.is_object(), path, ": __metadata__ must be an object of strings");
    for (const auto& [mkey, mvalue] : value.items()) {
      EG_CHECK(mvalue.is_string(), path, ": __metadata__ \"", mkey, "\" must be a string, got ", mvalue.dump());
      file.metadata[mkey] = mvalue.get<std::string>();
    }
  }
  check_tiling(path, entries, file_bytes - 8 - header_bytes);
  const int64_t recorded_crc = file.metadata_int(kCrcKey);

  // Tiled in offset order: reading the tensors in that order reads the data section front to back.
  uint32_t crc = 0;
  for (const Entry& e : entries) {
    Tensor t = Tensor::empty(e.shape, e.dtype);
    in.read(static_cast<char*>(t.raw()), static_cast<std::streamsize>(t.nbytes()));
    EG_CHECK(in.good(), path, ": read of tensor \"", e.name, "\" failed");
    crc = crc32(t.raw(), t.nbytes(), crc);
    file.tensors.emplace(e.name, std::move(t));
  }
  EG_CHECK(recorded_crc == static_cast<int64_t>(crc), path, ": checksum mismatch: the data section has CRC-32 ",
           crc, " but the header records ", recorded_crc, " (the file is corrupt)");
  return file;
}

}  // namespace engram
