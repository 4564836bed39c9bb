#include "runtime/config/config.h"

#include <google/protobuf/io/tokenizer.h>
#include <google/protobuf/text_format.h>

#include <fstream>
#include <sstream>

#include "runtime/error.h"

namespace engram {

namespace pb = google::protobuf;

namespace {

class CollectErrors : public pb::io::ErrorCollector {
 public:
  explicit CollectErrors(std::string source) : source_(std::move(source)) {}
  void AddError(int line, int column, const std::string& message) override {
    if (first_.empty())
      first_ = source_ + ":" + std::to_string(line + 1) + ":" + std::to_string(column + 1) + ": " + message;
  }
  void AddWarning(int, int, const std::string&) override {}
  const std::string& first() const { return first_; }

 private:
  std::string source_;
  std::string first_;
};

// Rule checks: each failure names the field path, its value and the rule.
template <class T>
void require(bool ok, const std::string& field, T value, const std::string& rule) {
  if (!ok) EG_FAIL(field, " = ", value, " ", rule);
}

void require_set(bool present, const std::string& field) {
  if (!present) EG_FAIL(field, " is required but not set");
}

// A string value from the command line in text-format quotes; one already quoted (or a [list])
// is taken as written.
std::string quoted(const std::string& value) {
  if (!value.empty() && (value.front() == '"' || value.front() == '\'' || value.front() == '[')) return value;
  std::string out = "\"";
  for (char c : value) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}

}  // namespace

void parse_text_message(const std::string& text, const std::string& source, pb::Message& msg) {
  CollectErrors errors(source);
  pb::TextFormat::Parser parser;
  parser.RecordErrorsTo(&errors);
  if (!parser.ParseFromString(text, &msg)) {
    EG_FAIL(errors.first().empty() ? source + ": cannot parse config" : errors.first());
  }
}

ExperimentConfig parse_config_text(const std::string& text, const std::string& source) {
  ExperimentConfig cfg;
  parse_text_message(text, source, cfg);
  return cfg;
}

void apply_overrides(pb::Message& cfg, const std::vector<std::string>& overrides) {
  for (const std::string& item : overrides) {
    const size_t eq = item.find('=');
    EG_CHECK(eq != std::string::npos && eq > 0, "--set ", item, ": expected field.path=value");
    const std::string path = item.substr(0, eq);
    const std::string value = item.substr(eq + 1);
    // Walk the path with reflection so unknown fields are named precisely and repeated fields
    // are cleared (text-format merge would append to them).
    pb::Message* msg = &cfg;
    std::string text_open, text_close;
    size_t start = 0;
    while (true) {
      const size_t dot = path.find('.', start);
      const std::string name = path.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
      const pb::FieldDescriptor* field = msg->GetDescriptor()->FindFieldByName(name);
      EG_CHECK(field != nullptr, "--set ", item, ": ", msg->GetDescriptor()->name(), " has no field '",
               name, "'");
      if (dot == std::string::npos) {
        if (field->is_repeated()) msg->GetReflection()->ClearField(msg, field);
        text_open += name + ": " + (field->cpp_type() == pb::FieldDescriptor::CPPTYPE_STRING ? quoted(value) : value);
        break;
      }
      EG_CHECK(field->cpp_type() == pb::FieldDescriptor::CPPTYPE_MESSAGE && !field->is_repeated(),
               "--set ", item, ": '", name, "' is not a message field");
      msg = msg->GetReflection()->MutableMessage(msg, field);
      text_open += name + " { ";
      text_close = " }" + text_close;
      start = dot + 1;
    }
    CollectErrors errors("--set " + item);
    pb::TextFormat::Parser parser;
    parser.RecordErrorsTo(&errors);
    EG_CHECK(parser.MergeFromString(text_open + text_close, &cfg),
             errors.first().empty() ? "--set " + item + ": cannot parse" : errors.first());
  }
}

void validate_model_config(const ModelConfig& m) {
  require_set(m.has_vocab_size(), "model.vocab_size");
  require_set(m.has_d_model(), "model.d_model");
  require_set(m.has_n_layers(), "model.n_layers");
  require_set(m.has_n_heads(), "model.n_heads");
  require(m.vocab_size() >= 2, "model.vocab_size", m.vocab_size(), "must be >= 2");
  require(m.d_model() >= 1, "model.d_model", m.d_model(), "must be >= 1");
  require(m.n_layers() >= 1, "model.n_layers", m.n_layers(), "must be >= 1");
  require(m.n_heads() >= 1, "model.n_heads", m.n_heads(), "must be >= 1");
  require(m.d_model() % m.n_heads() == 0, "model.d_model", m.d_model(),
          "must be divisible by model.n_heads (" + std::to_string(m.n_heads()) + ")");
  require((m.d_model() / m.n_heads()) % 2 == 0, "model.d_model / model.n_heads", m.d_model() / m.n_heads(),
          "must be even (RoPE rotates pairs)");
  require(m.n_dense_layers() >= 0 && m.n_dense_layers() <= m.n_layers(), "model.n_dense_layers",
          m.n_dense_layers(), "must be in [0, model.n_layers = " + std::to_string(m.n_layers()) + "]");
  if (m.n_dense_layers() > 0) {
    require_set(m.has_d_ff(), "model.d_ff");
    require(m.d_ff() >= 1, "model.d_ff", m.d_ff(), "must be >= 1");
  }
  require(m.norm_eps() > 0, "model.norm_eps", m.norm_eps(), "must be > 0");
  require(m.rope_theta() > 0, "model.rope_theta", m.rope_theta(), "must be > 0");
  require(m.init_std() >= 0, "model.init_std", m.init_std(), "must be >= 0");
  require(m.eos_id() >= 0 && m.eos_id() < m.vocab_size(), "model.eos_id", m.eos_id(),
          "must be in [0, model.vocab_size)");

  if (has_moe(m)) {
    EG_CHECK(m.has_moe(), "model.moe is required: layers ", m.n_dense_layers(), "..", m.n_layers() - 1,
             " are MoE layers (model.n_dense_layers = ", m.n_dense_layers(), " < model.n_layers = ",
             m.n_layers(), ")");
    const auto& e = m.moe();
    require_set(e.has_n_routed_experts(), "model.moe.n_routed_experts");
    require_set(e.has_top_k(), "model.moe.top_k");
    require_set(e.has_expert_d_ff(), "model.moe.expert_d_ff");
    require(e.n_routed_experts() >= 1, "model.moe.n_routed_experts", e.n_routed_experts(), "must be >= 1");
    require(e.top_k() >= 1, "model.moe.top_k", e.top_k(), "must be >= 1");
    require(e.top_k() <= e.n_routed_experts(), "model.moe.top_k", e.top_k(),
            "must be <= model.moe.n_routed_experts (" + std::to_string(e.n_routed_experts()) + ")");
    require(e.expert_d_ff() >= 1, "model.moe.expert_d_ff", e.expert_d_ff(), "must be >= 1");
    require(e.n_shared_experts() >= 0, "model.moe.n_shared_experts", e.n_shared_experts(), "must be >= 0");
    require(e.routed_scale() > 0, "model.moe.routed_scale", e.routed_scale(), "must be > 0");
    require(e.bias_update_rate() >= 0, "model.moe.bias_update_rate", e.bias_update_rate(), "must be >= 0");
    require(e.aux_loss_coeff() >= 0, "model.moe.aux_loss_coeff", e.aux_loss_coeff(), "must be >= 0");
    require(e.z_loss_coeff() >= 0, "model.moe.z_loss_coeff", e.z_loss_coeff(), "must be >= 0");
  }

  if (m.has_engram()) {
    const auto& g = m.engram();
    for (int i = 0; i < g.layers_size(); ++i) {
      const std::string f = "model.engram.layers[" + std::to_string(i) + "]";
      require(g.layers(i) >= 0 && g.layers(i) < m.n_layers(), f, g.layers(i),
              "must be in [0, model.n_layers = " + std::to_string(m.n_layers()) + ")");
      if (i > 0)
        require(g.layers(i) > g.layers(i - 1), f, g.layers(i), "must be greater than the previous layer (ascending, no repeats)");
    }
    if (g.layers_size() > 0) {
      require_set(g.has_head_dim(), "model.engram.head_dim");
      require(g.max_ngram() >= 2, "model.engram.max_ngram", g.max_ngram(), "must be >= 2");
      require(g.heads_per_ngram() >= 1, "model.engram.heads_per_ngram", g.heads_per_ngram(), "must be >= 1");
      require(g.head_dim() >= 1, "model.engram.head_dim", g.head_dim(), "must be >= 1");
      require(g.table_size_size() == g.max_ngram() - 1, "model.engram.table_size (count)", g.table_size_size(),
              "must list one size per order 2.." + std::to_string(g.max_ngram()) + " (" +
                  std::to_string(g.max_ngram() - 1) + " values)");
      for (int i = 0; i < g.table_size_size(); ++i)
        require(g.table_size(i) >= 2, "model.engram.table_size[" + std::to_string(i) + "]", g.table_size(i),
                "is too small: each of its heads needs a prime modulus > table_size - 1 >= 1, so table_size must be >= 2");
      require(g.pad_id() >= -1 && g.pad_id() < m.vocab_size(), "model.engram.pad_id", g.pad_id(),
              "must be -1 (use model.eos_id) or in [0, model.vocab_size)");
      require(g.table_init_std() >= 0, "model.engram.table_init_std", g.table_init_std(), "must be >= 0");
      require(g.conv_kernel() >= 1, "model.engram.conv_kernel", g.conv_kernel(), "must be >= 1");
    }
  }
}

void validate_config(const ExperimentConfig& cfg) {
  EG_CHECK(cfg.has_model(), "model is required but not set");
  validate_model_config(cfg.model());

  const auto& o = cfg.optim();
  require(o.lr() > 0, "optim.lr", o.lr(), "must be > 0");
  require(o.min_lr() >= 0 && o.min_lr() <= o.lr(), "optim.min_lr", o.min_lr(), "must be in [0, optim.lr]");
  require(o.warmup_steps() >= 0, "optim.warmup_steps", o.warmup_steps(), "must be >= 0");
  require(o.beta1() >= 0 && o.beta1() < 1, "optim.beta1", o.beta1(), "must be in [0, 1)");
  require(o.beta2() >= 0 && o.beta2() < 1, "optim.beta2", o.beta2(), "must be in [0, 1)");
  require(o.eps() > 0, "optim.eps", o.eps(), "must be > 0");
  require(o.weight_decay() >= 0, "optim.weight_decay", o.weight_decay(), "must be >= 0");
  require(o.grad_clip() >= 0, "optim.grad_clip", o.grad_clip(), "must be >= 0 (0 disables clipping)");
  require(o.table_lr_mult() > 0, "optim.table_lr_mult", o.table_lr_mult(), "must be > 0");

  const auto& t = cfg.train();
  require(t.seq_len() >= 1, "train.seq_len", t.seq_len(), "must be >= 1");
  require(t.global_batch_size() >= 1, "train.global_batch_size", t.global_batch_size(), "must be >= 1");
  require(t.micro_batch_size() >= 0, "train.micro_batch_size", t.micro_batch_size(), "must be >= 0");
  if (t.micro_batch_size() > 0)
    require(t.global_batch_size() % t.micro_batch_size() == 0, "train.micro_batch_size", t.micro_batch_size(),
            "must divide train.global_batch_size (" + std::to_string(t.global_batch_size()) + ")");
  require(t.max_steps() >= 1, "train.max_steps", t.max_steps(), "must be >= 1");
  require(o.warmup_steps() <= t.max_steps(), "optim.warmup_steps", o.warmup_steps(),
          "must be <= train.max_steps (" + std::to_string(t.max_steps()) + ")");
  require(t.log_every() >= 1, "train.log_every", t.log_every(), "must be >= 1");
  require(t.eval_every() >= 0, "train.eval_every", t.eval_every(), "must be >= 0 (0 disables)");
  require(t.eval_batches() >= 1, "train.eval_batches", t.eval_batches(), "must be >= 1");
  require(t.keep_checkpoints() >= 0, "train.keep_checkpoints", t.keep_checkpoints(), "must be >= 0 (0 keeps all)");
  require(t.checkpoint_every() >= 0, "train.checkpoint_every", t.checkpoint_every(), "must be >= 0 (0: only at the end)");

  const auto& p = cfg.parallel();
  require(p.expert_parallel() >= 1, "parallel.expert_parallel", p.expert_parallel(), "must be >= 1");
  if (has_moe(cfg.model()))
    require(cfg.model().moe().n_routed_experts() % p.expert_parallel() == 0, "parallel.expert_parallel",
            p.expert_parallel(),
            "must divide model.moe.n_routed_experts (" + std::to_string(cfg.model().moe().n_routed_experts()) + ")");
  require(p.grad_bucket_mb() >= 0, "parallel.grad_bucket_mb", p.grad_bucket_mb(),
          "must be >= 0 (0: one bucket per parameter)");
}

ExperimentConfig load_config(const std::string& path, const std::vector<std::string>& overrides) {
  std::ifstream in(path);
  EG_CHECK(in.good(), path, ": cannot open config file");
  std::stringstream ss;
  ss << in.rdbuf();
  ExperimentConfig cfg = parse_config_text(ss.str(), path);
  apply_overrides(cfg, overrides);
  try {
    validate_config(cfg);
  } catch (const Error& e) {
    EG_FAIL(path, ": ", e.what());
  }
  return cfg;
}

std::string config_to_text(const google::protobuf::Message& msg) {
  std::string out;
  pb::TextFormat::PrintToString(msg, &out);
  return out;
}

}  // namespace engram
