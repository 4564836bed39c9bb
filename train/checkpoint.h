#pragma once
// Checkpoints (docs/CHECKPOINT.md). A checkpoint is a directory holding
//   model.safetensors      MODEL.md §7 names, float32, metadata: config, V', Engram hashing
//                          constants, step, data seed, CRC-32 of the tensor data
//   optimizer.safetensors  Adam moments of both optimizers ("adamw.m.<name>", "adamw.v.<name>",
//                          "sparse_adam.m.<name>", ...), metadata: step, CRC-32
// Both files are written atomically; <run_dir>/checkpoints/latest names the newest complete one.
#include <cstdint>
#include <string>
#include <vector>

#include "runtime/config/config.h"
#include "runtime/safetensors.h"
#include "train/trainer.h"

namespace engram {

// Writes <run_dir>/checkpoints/step_<8 digits>/ and then updates <run_dir>/checkpoints/latest.
// Returns the checkpoint directory. A distributed model (model.groups()) is gathered to world rank 0,
// which alone writes the same consolidated files; collective over the world then.
std::string save_checkpoint(const std::string& run_dir, const ExperimentConfig& cfg, const Model& model,
                            const Trainer& trainer);

// The directory named by <run_dir>/checkpoints/latest; error if there is none.
std::string latest_checkpoint(const std::string& run_dir);

// Restores the model weights, both optimizers' moments, the balancing biases and the step into an
// already built model/trainer (a distributed rank copies its own rows of each sharded tensor, so any
// world size loads any checkpoint). Errors (checksum, missing tensor, shape, config mismatch) name the file
// and what differs.
void load_checkpoint(const std::string& checkpoint_dir, const ExperimentConfig& cfg, Model& model,
                     Trainer& trainer);

// For evaluation: a model.safetensors file read once and verified (checksum, format, the stored config,
// the compression table V' as model.vocab_size ids), with what building its model needs:
// Model(info.config.model(), info.compression_table), then load_model_weights(info.file, model).
struct CheckpointInfo {
  SafetensorsFile file;  // the whole file, tensors included
  ExperimentConfig config;
  std::vector<int32_t> compression_table;
  int64_t step = 0;
};
CheckpointInfo read_checkpoint_info(const std::string& model_file);

// Checks `model_file` against `model` as load_checkpoint does (config, compression table, hashing
// constants, names and shapes), then copies the weights.
void load_model_weights(const SafetensorsFile& model_file, Model& model);

}  // namespace engram
