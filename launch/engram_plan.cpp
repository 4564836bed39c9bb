// engram-plan: parameter counts, training FLOPs and memory per rank of an experiment config, computed
// from the config alone (model/plan.h; fields and formulas in docs/TOOLS.md).
//
//   engram-plan --config FILE [--set field.path=value ...] [--world N] [--expert-parallel E] [--json]
//
// --world defaults to the expert-parallel size, which defaults to the config's parallel.expert_parallel.
#include <cinttypes>
#include <cstdio>
#include <string>
#include <vector>

#include "launch/cli.h"
#include "model/plan.h"
#include "runtime/config/config.h"

namespace engram {
namespace {

struct Options {
  std::string config_path;
  std::vector<std::string> overrides;
  int world = 0;            // 0: the expert-parallel size
  int expert_parallel = 0;  // 0: the config's parallel.expert_parallel
  bool json = false;
};

// Three significant digits and the suffix of the largest power of `base` not above the value:
// scaled(1234567, 1000, {"", "K", "M", ...}) = "1.23M".
std::string scaled(double value, double base, const char* const (&suffixes)[7]) {
  int i = 0;
  while (value >= base - 0.5 && i < 6) {
    value /= base;
    ++i;
  }
  char buf[48];
  std::snprintf(buf, sizeof buf, i == 0 ? "%.0f%s" : "%.3g%s", value, suffixes[i]);
  return buf;
}
std::string short_count(double value) {
  static const char* const kSuffix[7] = {"", "K", "M", "B", "T", "P", "E"};
  return scaled(value, 1000.0, kSuffix);
}
std::string short_flops(double value) {
  static const char* const kSuffix[7] = {" FLOP", " kFLOP", " MFLOP", " GFLOP", " TFLOP", " PFLOP", " EFLOP"};
  return scaled(value, 1000.0, kSuffix);
}
// Bytes in binary units: "12.3 MiB".
std::string short_bytes(int64_t bytes) {
  static const char* const kUnit[7] = {" B", " KiB", " MiB", " GiB", " TiB", " PiB", " EiB"};
  return scaled(static_cast<double>(bytes), 1024.0, kUnit);
}

void row(const char* label, const std::string& short_form, int64_t exact) {
  std::printf("  %-40s %10s %20" PRId64 "\n", label, short_form.c_str(), exact);
}
void count_row(const char* label, int64_t count) {
  row(label, short_count(static_cast<double>(count)), count);
}
void bytes_row(const char* label, int64_t bytes) { row(label, short_bytes(bytes), bytes); }

void print_table(const std::string& config_path, const Plan& plan) {
  const ParameterCounts& p = plan.params;
  std::printf("engram-plan: %s (world size %d, expert-parallel %d)\n\n", config_path.c_str(),
              plan.layout.world_size, plan.layout.expert_parallel);
  std::printf("%-42s %10s %20s\n", "Parameters (global)", "count", "exact");
  count_row(p.output == 0 ? "tok_embeddings (tied: also the LM head)" : "tok_embeddings", p.tok_embeddings);
  if (p.output != 0) count_row("output (LM head)", p.output);
  count_row("final norm", p.final_norm);
  count_row("attention (incl. attn norms)", p.attention);
  count_row("dense MLP (incl. ffn norms)", p.dense_mlp);
  count_row("MoE ffn norms", p.moe_norms);
  count_row("router", p.router);
  count_row("routed experts, active (top-k)", p.routed_experts_active);
  count_row("routed experts, inactive", p.routed_experts_inactive);
  count_row("shared experts", p.shared_experts);
  count_row("Engram tables", p.engram_tables);
  count_row("Engram projections, norms and conv", p.engram_projections);
  count_row("total (trained)", p.total());
  count_row("activated per token", p.activated_per_token());
  count_row("  of which Engram table values read", p.engram_table_values_per_token);
  count_row("balancing biases (buffers, not trained)", p.balancing_biases);
  for (size_t i = 0; i < plan.engram_layers.size(); ++i)
    std::printf("  Engram layer %" PRId64 ": %" PRId64 " table rows\n", plan.engram_layers[i],
                plan.engram_table_rows[i]);

  const FlopEstimate& f = plan.flops;
  std::printf(
      "\nTraining FLOPs: per token = 6 x matmul params per token + 6 x n_layers x seq_len x d_model\n");
  count_row("matmul params per token", f.matmul_params_per_token);
  row("attention (6 L T D)", short_flops(static_cast<double>(f.attention_per_token)), f.attention_per_token);
  row("per token", short_flops(static_cast<double>(f.per_token)), f.per_token);
  std::printf("  %-40s %10s %20.6e\n",
              ("per step (" + std::to_string(f.tokens_per_step) + " tokens)").c_str(),
              short_flops(f.per_step).c_str(), f.per_step);

  const MemoryEstimate& m = plan.memory;
  std::printf("\nMemory per rank (%s; activations estimated; micro-batch %" PRId64 " x %" PRId64 " micro-steps)\n",
              m.device_extra > 0 ? "peak on the GPU" : "CPU", m.micro_batch, m.micro_steps);
  bytes_row("parameters", m.parameters);
  bytes_row("gradients (dense)", m.gradients);
  bytes_row("Adam moments (dense + tables)", m.adam_moments);
  bytes_row("table row gradients (bound)", m.table_row_grads);
  bytes_row("activations (estimate)", m.activations);
  if (m.device_extra > 0) bytes_row("cuBLASLt workspace + bf16 operand copies", m.device_extra);
  bytes_row("total", m.total());
}

int run(const Options& options) {
  const ExperimentConfig cfg = load_config(options.config_path, options.overrides);
  PlanLayout layout;
  layout.expert_parallel =
      options.expert_parallel > 0 ? options.expert_parallel : cfg.parallel().expert_parallel();
  layout.world_size = options.world > 0 ? options.world : layout.expert_parallel;
  const Plan plan = make_plan(cfg, layout);
  if (options.json) {
    nlohmann::json j = plan_to_json(plan);
    j["config"] = options.config_path;
    std::printf("%s\n", j.dump().c_str());
  } else {
    print_table(options.config_path, plan);
  }
  return 0;
}

}  // namespace
}  // namespace engram

int main(int argc, char** argv) {
  engram::Options options;
  CLI::App app{"engram-plan: parameter counts, training FLOPs and memory per rank of an experiment config"};
  app.add_option("--config", options.config_path, "experiment config (.pbtxt)")->required();
  engram::cli::add_set_option(app, options.overrides);
  app.add_option("--world", options.world, "number of ranks (default: the expert-parallel size)")
      ->check(CLI::PositiveNumber);
  app.add_option("--expert-parallel", options.expert_parallel,
                 "expert-parallel group size (default: parallel.expert_parallel of the config)")
      ->check(CLI::PositiveNumber);
  app.add_flag("--json", options.json, "print one JSON object instead of the table");
  return engram::cli::run_tool(app, "engram-plan", argc, argv, [&] { return engram::run(options); });
}
