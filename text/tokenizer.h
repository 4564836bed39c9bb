#pragma once
// SentencePiece BPE tokenizer (byte fallback): training on a corpus, encoding and decoding.
// Special ids: 0 <unk>, 1 <s>, 2 </s> (= model.eos_id default), no padding id.
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace engram {

struct TokenizerTrainOptions {
  std::vector<std::string> input_files;  // plain UTF-8 text, one sentence or paragraph per line
  std::string model_prefix;              // writes <prefix>.model (and .vocab)
  int vocab_size = 8192;
  int64_t max_sentences = 2000000;       // sampled lines for training (SentencePiece input_sentence_size)
  uint64_t seed = 0;
};
void train_tokenizer(const TokenizerTrainOptions& options);

class Tokenizer {
 public:
  explicit Tokenizer(const std::string& model_path);  // error names the path
  ~Tokenizer();
  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;

  std::vector<int32_t> encode(const std::string& text) const;
  std::string decode(const std::vector<int32_t>& ids) const;
  int vocab_size() const;
  int eos_id() const;
  std::string piece(int id) const;  // raw piece string ("▁the", "<0x0A>", ...)
  bool is_byte(int id) const;       // a byte-fallback piece
  uint64_t hash() const { return hash_; }  // FNV-1a 64 of the model file bytes

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  uint64_t hash_ = 0;
};

}  // namespace engram
