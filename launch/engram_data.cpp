// engram-data: turns plain text into what training and evaluation read (docs/DATA.md): the
// SentencePiece tokenizer, the Engram compression table and token shards.
//
//   engram-data --config FILE [--set field.path=value ...] [--corpus DIR] [--eval DIR]
//               [--wikitext DIR] [--out DIR]
//
// Training text: every *.txt in --corpus (default data/corpus; scripts/fetch_data.sh fills it). Each
// file is cut into documents at blank lines; gcide.txt keeps only a fraction of them (a dictionary
// would otherwise be 43% of the text); the last --val-fraction of each file's documents is the
// validation split. Outputs (the config's data section, or <--out>/<file name> of each):
//   data.tokenizer          SentencePiece BPE, V = model.vocab_size, trained on a bounded sample of
//                           the training split (kept when it exists with that V)
//   data.compression_table  MODEL.md §4.1, built with ICU
//   data.train_shards, data.val_shards, and eval_<name>.bin beside the training shard for every
//   *.txt in --eval (default data/eval) and for WikiText-2 test/valid when --wikitext exists.
// Every output is checked on a second run and rebuilt only when missing or not valid.

#include <algorithm>
#include <chrono>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "launch/cli.h"
#include "runtime/atomic_file.h"
#include "runtime/config/config.h"
#include "runtime/checksum.h"
#include "runtime/token_shards.h"
#include "text/compression.h"
#include "text/tokenizer.h"

namespace engram {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

#ifdef ENGRAM_HAVE_ICU
constexpr bool kHaveIcu = true;
#else
constexpr bool kHaveIcu = false;
#endif
constexpr const char* kNoIcu =
    "this build of engram lacks ICU, which the Engram compression table needs: install libicu-dev "
    "(Debian), then configure and build again";

struct Options {
  std::string config_path;
  std::vector<std::string> overrides;
  std::string corpus_dir = "data/corpus";
  std::string eval_dir = "data/eval";
  std::string wikitext_dir = "../shared/data/wikitext-2";
  std::string out_dir;
  double val_fraction = 0.01;
  double gcide_fraction = 0.25;
  int64_t tokenizer_sample_mb = 16;
};

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

void say(const std::string& message) {
  std::printf("engram-data: %s\n", message.c_str());
  std::fflush(stdout);
}

template <class... Args>
std::string format(const char* pattern, Args... args) {
  char text[512];
  std::snprintf(text, sizeof text, pattern, args...);
  return text;
}

// ---- corpus ----

// A file's documents: maximal runs of lines that are not blank (blank: only spaces, tabs, CR).
std::vector<std::string_view> split_documents(std::string_view text) {
  std::vector<std::string_view> docs;
  size_t doc_begin = std::string_view::npos, doc_end = 0;
  for (size_t line_begin = 0; line_begin < text.size();) {
    const size_t nl = text.find('\n', line_begin);
    const size_t line_end = nl == std::string_view::npos ? text.size() : nl;
    const std::string_view line = text.substr(line_begin, line_end - line_begin);
    if (line.find_first_not_of(" \t\r") == std::string_view::npos) {
      if (doc_begin != std::string_view::npos) docs.push_back(text.substr(doc_begin, doc_end - doc_begin));
      doc_begin = std::string_view::npos;
    } else {
      if (doc_begin == std::string_view::npos) doc_begin = line_begin;
      doc_end = line_end;
    }
    line_begin = line_end + 1;
  }
  if (doc_begin != std::string_view::npos) docs.push_back(text.substr(doc_begin, doc_end - doc_begin));
  return docs;
}

// Keeps `fraction` of the documents in runs of 64 (whole dictionary entries, spread over the file):
// block b is kept when ⌊(b+1)·fraction⌋ > ⌊b·fraction⌋.
std::vector<std::string_view> keep_fraction(const std::vector<std::string_view>& docs, double fraction) {
  constexpr size_t kBlock = 64;
  std::vector<std::string_view> kept;
  for (size_t i = 0; i < docs.size(); ++i) {
    const double b = static_cast<double>(i / kBlock);
    if (std::floor((b + 1) * fraction) > std::floor(b * fraction)) kept.push_back(docs[i]);
  }
  return kept;
}

std::string join_documents(const std::vector<std::string_view>& docs, size_t begin, size_t end) {
  std::string text;
  for (size_t i = begin; i < end; ++i) {
    if (i > begin) text += "\n\n";
    text += docs[i];
  }
  return text;
}

struct CorpusFile {
  std::string name;
  size_t documents = 0, val_documents = 0;
  std::string train, val;  // documents joined by a blank line
};

std::vector<CorpusFile> read_corpus(const Options& o) {
  EG_CHECK(fs::is_directory(o.corpus_dir), o.corpus_dir,
           ": corpus directory not found (run scripts/fetch_data.sh, or pass --corpus DIR)");
  std::vector<fs::path> files;
  for (const auto& entry : fs::directory_iterator(o.corpus_dir)) {
    if (entry.is_regular_file() && entry.path().extension() == ".txt") files.push_back(entry.path());
  }
  std::sort(files.begin(), files.end());
  EG_CHECK(!files.empty(), o.corpus_dir,
           ": no *.txt files (run scripts/fetch_data.sh, or pass --corpus DIR)");

  std::vector<CorpusFile> corpus;
  for (const fs::path& path : files) {
    const std::string text = read_file(path.string());
    CorpusFile f;
    f.name = path.stem().string();
    std::vector<std::string_view> docs = split_documents(text);
    if (f.name == "gcide") docs = keep_fraction(docs, o.gcide_fraction);
    f.documents = docs.size();
    if (o.val_fraction > 0 && docs.size() >= 2) {
      f.val_documents = std::max<size_t>(1, static_cast<size_t>(std::floor(o.val_fraction * docs.size())));
    }
    const size_t split = docs.size() - f.val_documents;
    f.train = join_documents(docs, 0, split);
    f.val = join_documents(docs, split, docs.size());
    if (!f.train.empty()) corpus.push_back(std::move(f));
  }
  EG_CHECK(!corpus.empty(), o.corpus_dir, ": the *.txt files hold no text");
  return corpus;
}

// ---- tokenizer ----

// Every k-th non-empty line of the training split, k chosen so the sample stays under the budget:
// bounds the tokenizer's training time whatever the corpus size.
void write_tokenizer_sample(const std::vector<CorpusFile>& corpus, int64_t budget_bytes,
                            const std::string& path) {
  uint64_t total = 0;
  for (const auto& f : corpus) total += f.train.size();
  const uint64_t stride =
      std::max<uint64_t>(1, (total + budget_bytes - 1) / std::max<int64_t>(1, budget_bytes));
  std::string sample;
  uint64_t line_index = 0;
  for (const auto& f : corpus) {
    std::string_view rest(f.train);
    while (!rest.empty()) {
      const size_t nl = std::min(rest.find('\n'), rest.size());
      const std::string_view line = rest.substr(0, nl);
      rest.remove_prefix(std::min(nl + 1, rest.size()));
      if (line.empty()) continue;
      if (line_index++ % stride == 0) (sample += line) += '\n';
    }
  }
  write_file_atomic(path, sample);
}

// Removes a scratch file however the scope is left.
struct ScratchFile {
  std::string path;
  ~ScratchFile() {
    std::error_code ec;
    fs::remove(path, ec);
  }
};

bool tokenizer_usable(const std::string& path, int vocab_size) {
  if (!fs::exists(path)) return false;
  try {
    const Tokenizer tok(path);
    if (tok.vocab_size() == vocab_size) return true;
    say(path + ": has V = " + std::to_string(tok.vocab_size()) + ", the config wants " +
        std::to_string(vocab_size) + ": training a new one");
  } catch (const Error& e) {
    say(std::string(e.what()) + ": training a new one");
  }
  return false;
}

// ---- compression table ----

bool compression_table_usable(const std::string& path, const Tokenizer& tok) {
  if (!fs::exists(path)) return false;
  try {
    const CompressionTable t = read_compression_table(path);
    return t.tokenizer_hash == tok.hash() && static_cast<int>(t.table.size()) == tok.vocab_size();
  } catch (const Error& e) {
    say(std::string(e.what()) + ": building it again");
    return false;
  }
}

std::vector<int32_t> build_table(const Tokenizer& tok) {
#ifdef ENGRAM_HAVE_ICU
  return build_compression_table(tok);
#else
  (void)tok;
  EG_FAIL(kNoIcu);
#endif
}

// ---- shards ----

// The tokens of `text`, encoded on every core: the text is cut after newlines, and the line-by-line
// encoding makes encode(a + "\n" + b) == encode(a + "\n") + encode(b), so the result does not depend
// on the cut.
std::vector<int32_t> encode_parallel(const Tokenizer& tok, const std::string& text) {
  const size_t workers = std::max(1u, std::thread::hardware_concurrency());
  std::vector<size_t> cuts = {0};
  for (size_t w = 1; w < workers; ++w) {
    const size_t nl = text.find('\n', std::max(cuts.back(), text.size() * w / workers));
    if (nl == std::string::npos) break;
    cuts.push_back(nl + 1);
  }
  cuts.push_back(text.size());
  std::vector<std::vector<int32_t>> parts(cuts.size() - 1);
  std::vector<std::thread> threads;
  std::vector<std::exception_ptr> errors(parts.size());
  for (size_t i = 0; i < parts.size(); ++i) {
    threads.emplace_back([&, i] {
      try {
        parts[i] = tok.encode(text.substr(cuts[i], cuts[i + 1] - cuts[i]));
      } catch (...) {
        errors[i] = std::current_exception();
      }
    });
  }
  for (auto& t : threads) t.join();
  for (auto& e : errors) {
    if (e) std::rethrow_exception(e);
  }
  std::vector<int32_t> ids;
  for (const auto& p : parts) ids.insert(ids.end(), p.begin(), p.end());
  return ids;
}

// One shard: the texts in order, each encoded and followed by </s>.
struct ShardSpec {
  std::string label;
  std::string path;
  std::vector<const std::string*> texts;
};

struct ShardResult {
  std::string label, path;
  uint64_t tokens = 0, source_bytes = 0, file_bytes = 0;
  bool reused = false;
};

ShardResult make_shard(const ShardSpec& spec, const Tokenizer& tok) {
  ShardResult r{spec.label, spec.path};
  for (const std::string* t : spec.texts) r.source_bytes += t->size();
  if (fs::exists(spec.path)) {
    try {
      const TokenShard old = read_token_shard(spec.path);
      check_shard_tokenizer(old, tok.hash(), tok.vocab_size());
      EG_CHECK(old.header.source_bytes == r.source_bytes, spec.path, ": made from ", old.header.source_bytes,
               " bytes of text, the text now has ", r.source_bytes);
      r.tokens = old.header.token_count;
      r.file_bytes = fs::file_size(spec.path);
      r.reused = true;
      return r;
    } catch (const Error& e) {
      say(std::string(e.what()) + ": writing it again");
    }
  }
  std::vector<int32_t> tokens;
  for (const std::string* t : spec.texts) {
    const std::vector<int32_t> ids = encode_parallel(tok, *t);
    tokens.insert(tokens.end(), ids.begin(), ids.end());
    tokens.push_back(tok.eos_id());
  }
  write_token_shard(spec.path, tokens, tok.hash(), static_cast<uint32_t>(tok.vocab_size()), r.source_bytes);
  r.tokens = tokens.size();
  r.file_bytes = fs::file_size(spec.path);
  return r;
}

// ---- the command ----

struct OutputPaths {
  std::string tokenizer, compression_table, train, val, eval_dir;
};

OutputPaths output_paths(const ExperimentConfig& cfg, const Options& o) {
  const config::DataConfig& d = cfg.data();
  const std::pair<const std::string*, const char*> required[] = {
      {&d.tokenizer(), "data.tokenizer"},
      {&d.compression_table(), "data.compression_table"},
      {&d.train_shards(), "data.train_shards"},
      {&d.val_shards(), "data.val_shards"}};
  for (const auto& [value, field] : required) {
    EG_CHECK(!value->empty(), field, " is required but not set (engram-data writes it)");
  }
  const auto place = [&](const std::string& path) {
    return o.out_dir.empty() ? path : (fs::path(o.out_dir) / fs::path(path).filename()).string();
  };
  OutputPaths p{place(d.tokenizer()), place(d.compression_table()), place(d.train_shards()),
                place(d.val_shards()), ""};
  p.eval_dir = fs::path(p.train).parent_path().string();
  for (const std::string* path : {&p.tokenizer, &p.compression_table, &p.train, &p.val}) {
    const fs::path dir = fs::path(*path).parent_path();
    ensure_writable_dir(dir.empty() ? "." : dir.string());
  }
  return p;
}

// Held-out texts: every *.txt in --eval, then WikiText-2 test/valid when that directory exists.
std::vector<std::pair<std::string, std::string>> read_eval_texts(const Options& o) {
  std::vector<std::pair<std::string, std::string>> texts;  // (name, text)
  if (fs::is_directory(o.eval_dir)) {
    std::vector<fs::path> files;
    for (const auto& entry : fs::directory_iterator(o.eval_dir)) {
      if (entry.is_regular_file() && entry.path().extension() == ".txt") files.push_back(entry.path());
    }
    std::sort(files.begin(), files.end());
    for (const auto& f : files) texts.emplace_back(f.stem().string(), read_file(f.string()));
  } else {
    say(o.eval_dir + ": not found, no held-out evaluation text from it");
  }
  if (fs::is_directory(o.wikitext_dir)) {
    for (const char* split : {"test", "valid"}) {
      const fs::path f = fs::path(o.wikitext_dir) / (std::string(split) + ".txt");
      EG_CHECK(fs::is_regular_file(f), f.string(), ": not found (", o.wikitext_dir,
               " should hold WikiText-2 test.txt and valid.txt)");
      texts.emplace_back(std::string("wikitext2_") + split, read_file(f.string()));
    }
  } else {
    say(o.wikitext_dir + ": not found, skipping WikiText-2");
  }
  for (const auto& [name, text] : texts) EG_CHECK(!text.empty(), name, ": evaluation text is empty");
  return texts;
}

int run(const Options& o) {
  const auto start = Clock::now();
  EG_CHECK(o.val_fraction >= 0 && o.val_fraction <= 0.5, "--val-fraction ", o.val_fraction,
           " must be in [0, 0.5]");
  EG_CHECK(o.gcide_fraction > 0 && o.gcide_fraction <= 1, "--gcide-fraction ", o.gcide_fraction,
           " must be in (0, 1]");
  EG_CHECK(o.tokenizer_sample_mb >= 1, "--tokenizer-sample-mb ", o.tokenizer_sample_mb, " must be >= 1");
  const ExperimentConfig cfg = load_config(o.config_path, o.overrides);
  const int vocab_size = cfg.model().vocab_size();
  const OutputPaths out = output_paths(cfg, o);

  const std::vector<CorpusFile> corpus = read_corpus(o);
  const auto eval_texts = read_eval_texts(o);

  // 1. Tokenizer.
  std::string tokenizer_note = "reused";
  if (!tokenizer_usable(out.tokenizer, vocab_size)) {
    // Without ICU a new tokenizer would leave a table that cannot be built: fail before the work.
    EG_CHECK(kHaveIcu, kNoIcu);
    EG_CHECK(fs::path(out.tokenizer).extension() == ".model", out.tokenizer,
             ": data.tokenizer must end in .model (the tokenizer is written as <prefix>.model)");
    const auto t0 = Clock::now();
    const std::string prefix = fs::path(out.tokenizer).replace_extension().string();
    const ScratchFile sample{prefix + ".sample.txt"};
    write_tokenizer_sample(corpus, o.tokenizer_sample_mb << 20, sample.path);
    say(format("training the tokenizer (V = %d) on %.1f MB of sampled lines", vocab_size,
               fs::file_size(sample.path) / 1048576.0));
    TokenizerTrainOptions topt;
    topt.input_files = {sample.path};
    topt.model_prefix = prefix;
    topt.vocab_size = vocab_size;
    topt.seed = cfg.data().seed();
    train_tokenizer(topt);
    tokenizer_note = format("trained in %.1f s", seconds_since(t0));
  }
  const Tokenizer tok(out.tokenizer);
  EG_CHECK(tok.vocab_size() == vocab_size, out.tokenizer, ": has V = ", tok.vocab_size(),
           " but model.vocab_size = ", vocab_size);
  EG_CHECK(tok.eos_id() == cfg.model().eos_id(), out.tokenizer, ": </s> is id ", tok.eos_id(),
           " but model.eos_id = ", cfg.model().eos_id());

  // 2. Compression table.
  std::string table_note = "reused";
  if (!compression_table_usable(out.compression_table, tok)) {
    const auto t0 = Clock::now();
    write_compression_table(out.compression_table, build_table(tok), tok.hash());
    table_note = format("built in %.1f s", seconds_since(t0));
  }
  const CompressionTable table = read_compression_table(out.compression_table);
  const int32_t compressed =
      table.table.empty() ? 0 : *std::max_element(table.table.begin(), table.table.end()) + 1;

  // 3. Shards.
  std::vector<ShardSpec> specs = {{"train", out.train, {}}, {"val", out.val, {}}};
  for (const auto& f : corpus) {
    specs[0].texts.push_back(&f.train);
    if (!f.val.empty()) specs[1].texts.push_back(&f.val);
  }
  EG_CHECK(!specs[1].texts.empty(), o.corpus_dir,
           ": no validation text (each file needs >= 2 documents, "
           "separated by a blank line, and --val-fraction > 0)");
  for (const auto& [name, text] : eval_texts) {
    specs.push_back({name, (fs::path(out.eval_dir) / ("eval_" + name + ".bin")).string(), {&text}});
  }
  std::vector<ShardResult> results;
  for (const auto& spec : specs) {
    const auto t0 = Clock::now();
    results.push_back(make_shard(spec, tok));
    if (!results.back().reused) {
      say(format("wrote %s (%" PRIu64 " tokens) in %.1f s", spec.path.c_str(), results.back().tokens,
                 seconds_since(t0)));
    }
  }

  // Summary.
  say("tokenizer " + out.tokenizer + ": V = " + std::to_string(vocab_size) + ", hash " + hex64(tok.hash()) +
      " (" + tokenizer_note + ")");
  say("compression table " + out.compression_table + ": V' = " + std::to_string(compressed) + " (" +
      table_note + ")");
  std::printf("  %-16s %-40s %12s %14s %14s %8s\n", "shard", "path", "tokens", "text bytes", "file bytes",
              "B/token");
  for (const auto& r : results) {
    std::printf("  %-16s %-40s %12" PRIu64 " %14" PRIu64 " %14" PRIu64 " %8.2f%s\n", r.label.c_str(),
                r.path.c_str(), r.tokens, r.source_bytes, r.file_bytes,
                r.tokens ? static_cast<double>(r.source_bytes) / r.tokens : 0.0,
                r.reused ? "  (reused)" : "");
  }
  std::string files;
  for (const auto& f : corpus) {
    files += (files.empty() ? "" : ", ") + f.name + " " + std::to_string(f.documents - f.val_documents) +
             "+" + std::to_string(f.val_documents);
  }
  say("documents train+val: " + files);
  say(format("done in %.1f s", seconds_since(start)));
  return 0;
}

}  // namespace
}  // namespace engram

int main(int argc, char** argv) {
  engram::Options o;
  CLI::App app{"engram-data: tokenizer, Engram compression table and token shards from plain text"};
  app.add_option("--config", o.config_path, "experiment config (.pbtxt)")->required();
  engram::cli::add_set_option(app, o.overrides);
  app.add_option("--corpus", o.corpus_dir, "training text: every *.txt in DIR")->capture_default_str();
  app.add_option("--eval", o.eval_dir, "held-out text: every *.txt in DIR becomes eval_<name>.bin")
      ->capture_default_str();
  app.add_option("--wikitext", o.wikitext_dir,
                 "WikiText-2 directory (test.txt, valid.txt); skipped if absent")
      ->capture_default_str();
  app.add_option("--out", o.out_dir,
                 "write every output to DIR/<its file name> instead of the config's paths");
  app.add_option("--val-fraction", o.val_fraction, "last fraction of each file's documents held out")
      ->capture_default_str();
  app.add_option("--gcide-fraction", o.gcide_fraction, "fraction of the GCIDE dictionary kept")
      ->capture_default_str();
  app.add_option("--tokenizer-sample-mb", o.tokenizer_sample_mb, "text the tokenizer trains on (MB)")
      ->capture_default_str();
  return engram::cli::run_tool(app, "engram-data", argc, argv, [&] { return engram::run(o); });
}
