#pragma once
// safetensors files, exactly per the public format (github.com/huggingface/safetensors): an 8-byte
// little-endian header length N, N bytes of JSON mapping each tensor name to {"dtype", "shape",
// "data_offsets": [begin, end)} (offsets relative to the data section) plus "__metadata__"
// (string -> string), then the data section of raw little-endian tensor bytes. engram adds one
// metadata entry, "crc32": the CRC-32 (zlib) of the whole data section in decimal, which reading
// verifies. docs/CHECKPOINT.md describes the layout for readers in other frameworks.
#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "runtime/tensor.h"

namespace engram {

using NamedTensors = std::vector<std::pair<std::string, Tensor>>;

// Writes `path` atomically (runtime/atomic_file.h). Tensor data is laid out in the given order
// (callers pass registry order); the JSON keys come out sorted. Tensors must be F32, I32 or I64 with
// distinct names, on any device (device ones are written from a host copy); `metadata` must not hold
// "crc32", which the writer adds. Returns that CRC.
uint32_t write_safetensors(const std::string& path, const NamedTensors& tensors,
                           std::map<std::string, std::string> metadata);

struct SafetensorsFile {
  std::string path;                             // for error messages
  std::map<std::string, std::string> metadata;  // "crc32" included
  std::map<std::string, Tensor> tensors;

  // The metadata entry `key`; error naming the file if it is absent.
  const std::string& metadata_value(const std::string& key) const;
  // The metadata entry `key` as a decimal integer; error naming the file, key and text otherwise.
  int64_t metadata_int(const std::string& key) const;
};

// Reads and validates the whole file: header length within the file, JSON well formed, every
// tensor's dtype F32/I32/I64, shape and data_offsets consistent, the offsets tiling the data section
// exactly (no gap, no overlap, nothing past the end), and the CRC-32 of the data section equal to the
// "crc32" metadata. Every error names the file and the problem.
SafetensorsFile read_safetensors(const std::string& path);

}  // namespace engram
