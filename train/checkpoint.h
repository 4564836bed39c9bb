#pragma once
// Checkpoints (docs/CHECKPOINT.md). A checkpoint is a directory, in one of two layouts:
//   sharded (what training writes, at any world size):
//     manifest.json                           global shapes, the row pieces tiling each tensor, the
//                                             model metadata and every shard file's CRC-32
//     model-RRRRR-of-WWWWW.safetensors        rank R's rows of the model tensors
//     optimizer-RRRRR-of-WWWWW.safetensors    rank R's rows of the Adam moments
//   consolidated (engram-export; MODEL.md §7):
//     model.safetensors      MODEL.md §7 names, float32, metadata: config, V', Engram hashing
//                            constants, step, data seed, CRC-32 of the tensor data
//     optimizer.safetensors  Adam moments of both optimizers ("adamw.m.<name>", "adamw.v.<name>",
//                            "sparse_adam.m.<name>", ...), metadata: step, CRC-32
// Every file is written atomically; <run_dir>/checkpoints/latest names the newest complete one.
// Both layouts load into any world size and expert-parallel size.
#include <cstdint>
#include <string>
#include <vector>

#include "runtime/config/config.h"
#include "runtime/safetensors.h"
#include "train/trainer.h"

namespace engram {

// Writes the sharded <run_dir>/checkpoints/step_<8 digits>/ and then updates
// <run_dir>/checkpoints/latest. Returns the checkpoint directory. Every rank writes the rows it is the
// first holder of (replicated tensors: world rank 0; experts: the first rank of each expert-data-parallel
// group; table rows: their owner), so each value is stored once; world rank 0 writes the manifest.
// Collective over the world for a distributed model (model.groups()).
std::string save_checkpoint(const std::string& run_dir, const ExperimentConfig& cfg, const Model& model,
                            const Trainer& trainer);

// Whether <run_dir>/checkpoints/latest exists: the run has a checkpoint to resume from.
bool has_checkpoint(const std::string& run_dir);
// The directory named by <run_dir>/checkpoints/latest; error if there is none.
std::string latest_checkpoint(const std::string& run_dir);

// What a tool's --checkpoint names: a model.safetensors file or a checkpoint directory (returned as
// they are), or a run directory (its latest checkpoint). `option` names the option in errors.
std::string resolve_checkpoint(const std::string& path, const std::string& option);

// Restores the model weights, both optimizers' moments, the balancing biases and the step into an
// already built model/trainer, from either layout. A rank reads only the shard files holding its rows
// (resharding on load). Errors (checksum, missing tensor, shape, config mismatch) name the file and
// what differs; nothing is overwritten unless everything checks out.
void load_checkpoint(const std::string& checkpoint_dir, const ExperimentConfig& cfg, Model& model,
                     Trainer& trainer);

// For evaluation: the model of a checkpoint (a model.safetensors file, or a checkpoint directory of
// either layout, assembled in memory) read once and verified (checksums, format, the stored config,
// the compression table V' as model.vocab_size ids), with what building its model needs:
// Model(info.config.model(), info.compression_table), then load_model_weights(info.file, model).
struct CheckpointInfo {
  SafetensorsFile file;  // the whole file, tensors included
  ExperimentConfig config;
  std::vector<int32_t> compression_table;
  int64_t step = 0;
};
CheckpointInfo read_checkpoint_info(const std::string& path);

// Checks `model_file` against `model` as load_checkpoint does (config, compression table, hashing
// constants, names and shapes), then copies the weights.
void load_model_weights(const SafetensorsFile& model_file, Model& model);

// Writes the consolidated layout of the checkpoint in `checkpoint_dir` (either layout) to `out_dir`:
// model.safetensors and, with `with_optimizer`, optimizer.safetensors. Needs no model and no ranks.
void export_consolidated(const std::string& checkpoint_dir, const std::string& out_dir, bool with_optimizer);

}  // namespace engram
