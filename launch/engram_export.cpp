// engram-export: writes the consolidated single-file checkpoint of MODEL.md §7 from a checkpoint of
// either layout (docs/CHECKPOINT.md). Training writes sharded checkpoints (one file per rank plus a
// manifest); this is the file other frameworks and the documented Python loader read.
//
//   engram-export --checkpoint PATH --out DIR [--optimizer]
//
// PATH is a checkpoint directory or a run directory (its latest checkpoint). DIR receives
// model.safetensors and, with --optimizer, optimizer.safetensors (a consolidated checkpoint directory
// that engram-train --resume and engram-eval also accept). Runs in one process, which holds the
// whole model in memory.
#include <cstdio>
#include <string>

#include "launch/cli.h"
#include "train/checkpoint.h"

int main(int argc, char** argv) {
  std::string checkpoint, out_dir;
  bool with_optimizer = false;
  CLI::App app{"engram-export: the consolidated single-file checkpoint (MODEL.md §7) of a sharded checkpoint"};
  app.add_option("--checkpoint", checkpoint, "checkpoint directory or run directory (its latest checkpoint)")
      ->required();
  app.add_option("--out", out_dir, "output directory for model.safetensors (and optimizer.safetensors)")
      ->required();
  app.add_flag("--optimizer", with_optimizer, "also write optimizer.safetensors (the Adam moments)");
  return engram::cli::run_tool(app, "engram-export", argc, argv, [&] {
    const std::string dir = engram::resolve_checkpoint(checkpoint, "--checkpoint");
    engram::export_consolidated(dir, out_dir, with_optimizer);
    std::printf("engram-export: %s -> %s\n", dir.c_str(), out_dir.c_str());
    return 0;
  });
}
