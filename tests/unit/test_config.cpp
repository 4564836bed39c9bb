// Config parsing, overrides and validation: every rule names its field.
#include <gtest/gtest.h>

#include <fstream>
#include <string>

#include "runtime/config/config.h"

namespace engram {
namespace {

const char* kValid = R"(
model {
  vocab_size: 64 d_model: 32 n_layers: 4 n_heads: 4 d_ff: 64 n_dense_layers: 1
  moe { n_routed_experts: 8 top_k: 2 expert_d_ff: 16 n_shared_experts: 1 }
  engram { layers: [1, 3] max_ngram: 3 heads_per_ngram: 2 head_dim: 8 table_size: [101, 103] }
}
optim { lr: 1e-3 warmup_steps: 10 }
train { seq_len: 16 global_batch_size: 4 max_steps: 100 }
)";

ExperimentConfig valid() { return parse_config_text(kValid, "test.pbtxt"); }

// Expects validate_config to fail with a message containing every fragment.
void expect_invalid(const ExperimentConfig& cfg, std::initializer_list<const char*> fragments) {
  try {
    validate_config(cfg);
    FAIL() << "config was accepted; expected an error mentioning " << *fragments.begin();
  } catch (const Error& e) {
    for (const char* f : fragments) EXPECT_NE(std::string(e.what()).find(f), std::string::npos) << e.what();
  }
}

TEST(Config, ValidConfigParsesWithDefaults) {
  ExperimentConfig cfg = valid();
  EXPECT_NO_THROW(validate_config(cfg));
  EXPECT_EQ(cfg.model().d_model(), 32);
  EXPECT_FLOAT_EQ(cfg.model().norm_eps(), 1e-6f);
  EXPECT_EQ(cfg.model().moe().score_func(), config::SIGMOID);
  EXPECT_TRUE(cfg.model().moe().normalize_topk());
  EXPECT_FLOAT_EQ(cfg.optim().table_lr_mult(), 5.0f);
  EXPECT_EQ(engram_pad_id(cfg.model()), cfg.model().eos_id());
  EXPECT_TRUE(has_moe(cfg.model()));
  EXPECT_TRUE(has_engram(cfg.model()));
}

TEST(Config, UnknownFieldNamesFileLineAndField) {
  try {
    parse_config_text("model {\n  d_modl: 3\n}\n", "my.pbtxt");
    FAIL() << "unknown field accepted";
  } catch (const Error& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find("my.pbtxt:2:"), std::string::npos) << msg;
    EXPECT_NE(msg.find("d_modl"), std::string::npos) << msg;
  }
}

TEST(Config, MistypedValueIsRejected) {
  EXPECT_THROW(parse_config_text("model { d_model: \"wide\" }", "x.pbtxt"), Error);
  EXPECT_THROW(parse_config_text("model { d_model: 1.5 }", "x.pbtxt"), Error);
}

TEST(Config, TopKAboveExperts) {
  auto cfg = valid();
  cfg.mutable_model()->mutable_moe()->set_top_k(9);
  expect_invalid(cfg, {"model.moe.top_k", "9", "n_routed_experts"});
}

TEST(Config, DModelNotDivisibleByHeads) {
  auto cfg = valid();
  cfg.mutable_model()->set_n_heads(5);
  expect_invalid(cfg, {"model.d_model", "divisible", "n_heads"});
}

TEST(Config, OddHeadDim) {
  auto cfg = valid();
  cfg.mutable_model()->set_d_model(36);
  cfg.mutable_model()->set_n_heads(4);  // head dim 9
  expect_invalid(cfg, {"even"});
}

TEST(Config, EngramLayerOutOfRange) {
  auto cfg = valid();
  cfg.mutable_model()->mutable_engram()->set_layers(1, 4);
  expect_invalid(cfg, {"model.engram.layers[1]", "4", "n_layers"});
}

TEST(Config, EngramLayersMustAscend) {
  auto cfg = valid();
  cfg.mutable_model()->mutable_engram()->set_layers(1, 1);
  expect_invalid(cfg, {"model.engram.layers[1]", "ascending"});
}

TEST(Config, TableSizeTooSmallForItsHeads) {
  auto cfg = valid();
  cfg.mutable_model()->mutable_engram()->set_table_size(1, 1);
  expect_invalid(cfg, {"model.engram.table_size[1]", "too small"});
}

TEST(Config, TableSizeCountMustMatchOrders) {
  auto cfg = valid();
  cfg.mutable_model()->mutable_engram()->add_table_size(107);
  expect_invalid(cfg, {"model.engram.table_size", "2 values"});
}

TEST(Config, MissingRequiredField) {
  auto cfg = valid();
  cfg.mutable_model()->clear_vocab_size();
  expect_invalid(cfg, {"model.vocab_size", "required"});
  cfg = valid();
  cfg.mutable_model()->clear_moe();
  expect_invalid(cfg, {"model.moe is required"});
}

TEST(Config, OutOfRangeOptimAndTrainValues) {
  auto cfg = valid();
  cfg.mutable_optim()->set_beta2(1.0f);
  expect_invalid(cfg, {"optim.beta2"});
  cfg = valid();
  cfg.mutable_train()->set_micro_batch_size(3);
  expect_invalid(cfg, {"train.micro_batch_size", "divide"});
  cfg = valid();
  cfg.mutable_optim()->set_warmup_steps(1000);
  expect_invalid(cfg, {"optim.warmup_steps", "max_steps"});
  cfg = valid();
  cfg.mutable_parallel()->set_expert_parallel(3);
  expect_invalid(cfg, {"parallel.expert_parallel", "divide"});
  cfg = valid();
  cfg.mutable_parallel()->set_grad_bucket_mb(-1);
  expect_invalid(cfg, {"parallel.grad_bucket_mb", ">= 0"});
}

TEST(Config, OverridesScalarsNestedAndRepeated) {
  auto cfg = valid();
  apply_overrides(cfg, {"model.d_model=64", "model.moe.top_k=3", "model.engram.layers=[0, 2]", "optim.lr=0.01",
                        "train.run_dir=/tmp/a \"b\"", "data.tokenizer=\"quoted.model\""});
  EXPECT_EQ(cfg.train().run_dir(), "/tmp/a \"b\"");  // strings need no quotes on the command line
  EXPECT_EQ(cfg.data().tokenizer(), "quoted.model");
  EXPECT_EQ(cfg.model().d_model(), 64);
  EXPECT_EQ(cfg.model().moe().top_k(), 3);
  ASSERT_EQ(cfg.model().engram().layers_size(), 2);  // replaced, not appended
  EXPECT_EQ(cfg.model().engram().layers(0), 0);
  EXPECT_EQ(cfg.model().engram().layers(1), 2);
  EXPECT_FLOAT_EQ(cfg.optim().lr(), 0.01f);
  EXPECT_NO_THROW(validate_config(cfg));
}

TEST(Config, BadOverridesNameTheProblem) {
  auto cfg = valid();
  try {
    apply_overrides(cfg, {"model.moe.topk=3"});
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'topk'"), std::string::npos) << e.what();
  }
  EXPECT_THROW(apply_overrides(cfg, {"model.d_model"}), Error);
  EXPECT_THROW(apply_overrides(cfg, {"model.d_model.x=3"}), Error);
  EXPECT_THROW(apply_overrides(cfg, {"model.d_model=abc"}), Error);
}

TEST(Config, LoadConfigPrefixesThePath) {
  const std::string path = testing::TempDir() + "/bad_config.pbtxt";
  {
    std::ofstream out(path);
    std::string text = kValid;
    text.replace(text.find("top_k: 2"), 8, "top_k: 12");
    out << text;
  }
  try {
    load_config(path);
    FAIL();
  } catch (const Error& e) {
    std::string msg = e.what();
    EXPECT_EQ(msg.rfind(path, 0), 0u) << msg;
    EXPECT_NE(msg.find("model.moe.top_k"), std::string::npos) << msg;
  }
  EXPECT_THROW(load_config(testing::TempDir() + "/does_not_exist.pbtxt"), Error);
}

TEST(Config, TextRoundTrip) {
  auto cfg = valid();
  auto again = parse_config_text(config_to_text(cfg), "roundtrip");
  EXPECT_EQ(cfg.SerializeAsString(), again.SerializeAsString());
}

}  // namespace
}  // namespace engram
