#pragma once
// The manifest of a sharded checkpoint (docs/CHECKPOINT.md): manifest.json in the checkpoint
// directory names every tensor with its global shape and the pieces (dim-0 row ranges) that tile it,
// each piece stored under the tensor's name in one shard file, and the CRC-32 every shard file must
// carry. Parsing checks the whole structure, so a loader can trust what it reads here.
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace engram {

// Rows [begin, begin + rows) of a tensor, stored in `file` (a name inside the checkpoint directory).
struct ManifestPiece {
  std::string file;
  int64_t begin = 0;
  int64_t rows = 0;
};

struct ManifestTensor {
  std::string name;
  std::vector<int64_t> shape;          // global shape, float32
  std::vector<ManifestPiece> pieces;   // ascending, tiling [0, shape[0]) exactly
};

struct CheckpointManifest {
  int64_t step = 0;
  int world_size = 1;       // of the run that wrote it (informative: any world size loads it)
  int expert_parallel = 1;
  // The consolidated model file's metadata: config, vocab_compressed, engram_hashing,
  // compression_table, data_seed (docs/CHECKPOINT.md); the step is `step`.
  std::map<std::string, std::string> metadata;
  std::vector<ManifestTensor> model;      // MODEL.md §7 names, registry order
  std::vector<ManifestTensor> optimizer;  // "adamw.m.<name>", ..., registry order
  std::map<std::string, uint32_t> file_crc32;  // shard file -> the "crc32" its metadata must hold
};

std::string manifest_to_json(const CheckpointManifest& manifest);

// Parses and checks: format, types, shapes, pieces tiling each tensor without gap or overlap, every
// piece's file listed with a CRC, names unique. Errors name `path` and the problem.
CheckpointManifest parse_manifest(const std::string& text, const std::string& path);

}  // namespace engram
