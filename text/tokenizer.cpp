// SentencePiece BPE through its C++ API. Debian's libsentencepiece carries and exports its own
// protobuf-lite (3.14); the build links libprotobuf (3.21) statically with --exclude-libs, so each
// library binds to its own copy in one process (see the top-level CMakeLists.txt).
#include "text/tokenizer.h"

#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <sstream>
#include <string_view>
#include <thread>
#include <unordered_map>

#include "runtime/atomic_file.h"
#include "runtime/checksum.h"
#include "runtime/error.h"

namespace engram {

namespace {

// Lines longer than this are left out of tokenizer training (not of encoding): paragraphs fit.
constexpr int kMaxTrainingLineBytes = 1 << 15;

std::string join(const std::vector<std::string>& parts, char sep) {
  std::string out;
  for (size_t i = 0; i < parts.size(); ++i) out += (i ? std::string(1, sep) : "") + parts[i];
  return out;
}

}  // namespace

void train_tokenizer(const TokenizerTrainOptions& options) {
  EG_CHECK(!options.input_files.empty(), "tokenizer training needs at least one input file");
  EG_CHECK(!options.model_prefix.empty(), "tokenizer training needs a model prefix");
  EG_CHECK(options.vocab_size > 259, "tokenizer vocab size ", options.vocab_size,
           " must be > 259 (it holds <unk>, <s>, </s> and the 256 byte pieces)");
  for (const auto& f : options.input_files) {
    EG_CHECK(f.find(',') == std::string::npos, f, ": tokenizer input paths cannot contain ','");
  }
  // Identity normalization, whitespace kept as is: decode(encode(text)) == text for valid UTF-8,
  // which bits-per-byte evaluation relies on. Case, accents and width are the compression table's
  // business (MODEL.md §4.1), not the tokenizer's.
  const std::unordered_map<std::string, std::string> args = {
      {"input", join(options.input_files, ',')},
      {"model_type", "bpe"},
      {"vocab_size", std::to_string(options.vocab_size)},
      {"byte_fallback", "true"},
      {"unk_id", "0"},
      {"bos_id", "1"},
      {"eos_id", "2"},
      {"pad_id", "-1"},
      {"character_coverage", "0.9995"},
      {"input_sentence_size", std::to_string(options.max_sentences)},
      {"shuffle_input_sentence", "true"},
      {"max_sentence_length", std::to_string(kMaxTrainingLineBytes)},
      {"num_threads", std::to_string(std::max(1u, std::thread::hardware_concurrency()))},
      {"normalization_rule_name", "identity"},
      {"remove_extra_whitespaces", "false"},
      {"allow_whitespace_only_pieces", "true"},  // indentation runs in code become pieces
      {"split_digits", "true"},
      {"minloglevel", "1"},  // warnings and errors only
  };
  // SentencePiece seeds its thread_local generator from the global seed on first use in a thread, so
  // training runs in a fresh thread to honour this call's seed. (0.1.97 samples lines with a fixed
  // seed of its own: there, the model is a function of the input alone.)
  std::string model_bytes;
  sentencepiece::util::Status status;
  std::thread worker([&] {
    sentencepiece::SetRandomGeneratorSeed(static_cast<unsigned int>(options.seed ^ (options.seed >> 32)));
    status = sentencepiece::SentencePieceTrainer::Train(args, nullptr, &model_bytes);
  });
  worker.join();
  EG_CHECK(status.ok(), options.model_prefix, ".model: tokenizer training failed: ", status.ToString());

  // The vocabulary listing (piece<TAB>score), for people; the .model file is what the tools read.
  sentencepiece::SentencePieceProcessor trained;
  EG_CHECK(trained.LoadFromSerializedProto(model_bytes).ok(), options.model_prefix,
           ".model: the trained model does not load");
  std::ostringstream vocab;
  for (int id = 0; id < trained.GetPieceSize(); ++id) {
    vocab << trained.IdToPiece(id) << '\t' << trained.GetScore(id) << '\n';
  }
  write_file_atomic(options.model_prefix + ".vocab", vocab.str());
  write_file_atomic(options.model_prefix + ".model", model_bytes);  // last: its presence means "done"
}

struct Tokenizer::Impl {
  sentencepiece::SentencePieceProcessor sp;
  int newline_id = -1;  // the "<0x0A>" byte piece
};

Tokenizer::Tokenizer(const std::string& model_path) : impl_(std::make_unique<Impl>()) {
  const std::string bytes = read_file(model_path);
  const auto status = impl_->sp.LoadFromSerializedProto(bytes);
  EG_CHECK(status.ok(), model_path, ": not a SentencePiece model (", status.ToString(), ")");
  impl_->newline_id = impl_->sp.PieceToId("<0x0A>");
  EG_CHECK(impl_->sp.IsByte(impl_->newline_id), model_path,
           ": the tokenizer has no byte-fallback pieces (train it with byte_fallback=true)");
  hash_ = fnv1a64_bytes(bytes);
}

Tokenizer::~Tokenizer() = default;

// Text is encoded line by line, lines joined by the "<0x0A>" byte piece: SentencePiece trains on
// lines, so this gives every line the word-initial ("▁") pieces it learned, and decoding each line
// on its own undoes it exactly (docs/DATA.md).
std::vector<int32_t> Tokenizer::encode(const std::string& text) const {
  std::vector<int32_t> ids;
  std::vector<int> line_ids;
  std::string_view rest(text);
  while (true) {
    const size_t nl = rest.find('\n');
    const auto status = impl_->sp.Encode(rest.substr(0, nl), &line_ids);
    EG_CHECK(status.ok(), "tokenizer: encoding failed: ", status.ToString());
    ids.insert(ids.end(), line_ids.begin(), line_ids.end());
    if (nl == std::string_view::npos) break;
    ids.push_back(impl_->newline_id);
    rest.remove_prefix(nl + 1);
  }
  return ids;
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids) const {
  std::string text, line_text;
  std::vector<int> line;
  const auto flush = [&] {
    const auto status = impl_->sp.Decode(line, &line_text);
    EG_CHECK(status.ok(), "tokenizer: decoding failed: ", status.ToString());
    text += line_text;
    line.clear();
  };
  for (const int32_t id : ids) {
    EG_CHECK(id >= 0 && id < vocab_size(), "tokenizer: id ", id, " is outside the vocabulary [0, ",
             vocab_size(), ")");
    if (id == impl_->newline_id) {
      flush();
      text += '\n';
    } else {
      line.push_back(id);
    }
  }
  flush();
  return text;
}

int Tokenizer::vocab_size() const { return impl_->sp.GetPieceSize(); }
int Tokenizer::eos_id() const { return impl_->sp.eos_id(); }

std::string Tokenizer::piece(int id) const {
  EG_CHECK(id >= 0 && id < vocab_size(), "tokenizer: id ", id, " is outside the vocabulary [0, ",
           vocab_size(), ")");
  return impl_->sp.IdToPiece(id);
}

bool Tokenizer::is_byte(int id) const { return id >= 0 && id < vocab_size() && impl_->sp.IsByte(id); }

}  // namespace engram
