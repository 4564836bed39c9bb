#pragma once
// Helpers shared by the tests: seeded random inputs, poisoned outputs (so that elements a kernel
// fails to write are caught), double-precision copies for naive references, closeness checks and
// central differences; for tests of files and tools: scratch directories, little-endian fields,
// expected errors, a tiny trained tokenizer and shell commands with their output.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <iomanip>
#include <limits>
#include <numeric>
#include <random>
#include <source_location>
#include <string>
#include <vector>

#include "runtime/atomic_file.h"
#include "runtime/error.h"
#include "runtime/tensor.h"
#include "text/tokenizer.h"

namespace engram::testing_util {

// Float tensor of values uniform in [lo, hi), drawn as float from gen.
inline Tensor random_uniform(const Shape& shape, std::mt19937& gen, float lo = -1.0f, float hi = 1.0f) {
  std::uniform_real_distribution<float> dist(lo, hi);
  Tensor t = Tensor::empty(shape);
  float* p = t.data<float>();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = dist(gen);
  return t;
}

// Overwrites t with values from N(mean, std²), drawn in double and rounded to float.
inline void fill_normal(Tensor& t, std::mt19937& gen, double mean = 0.0, double std = 1.0) {
  std::normal_distribution<double> dist(mean, std);
  float* p = t.data<float>();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = static_cast<float>(dist(gen));
}

// A new tensor of normal draws (double, rounded to float).
inline Tensor random_normal(const Shape& shape, std::mt19937& gen, double std = 1.0) {
  Tensor t = Tensor::empty(shape);
  fill_normal(t, gen, 0.0, std);
  return t;
}

// A learnable token stream for training tests: a fixed sequence of `period` tokens in [3, vocab)
// repeated, with 10% of positions replaced by a random token (noise drawn from `seed`).
inline std::vector<int32_t> noisy_pattern_tokens(size_t count, uint32_t seed, int32_t vocab, int period) {
  std::mt19937 pattern_gen(7), noise_gen(seed);
  std::uniform_int_distribution<int32_t> token(3, vocab - 1);
  std::vector<int32_t> pattern(static_cast<size_t>(period));
  for (int32_t& t : pattern) t = token(pattern_gen);
  std::bernoulli_distribution noisy(0.1);
  std::vector<int32_t> tokens(count);
  for (size_t i = 0; i < count; ++i) tokens[i] = noisy(noise_gen) ? token(noise_gen) : pattern[i % period];
  return tokens;
}

// Ids of type T (int32_t or int64_t) uniform in [0, high).
template <class T>
Tensor random_ids(const Shape& shape, int64_t high, std::mt19937& gen) {
  std::uniform_int_distribution<int64_t> dist(0, high - 1);
  std::vector<T> ids(shape_numel(shape));
  for (T& id : ids) id = static_cast<T>(dist(gen));
  return Tensor::from_vector(ids, shape);
}

// A batch of `rows` rows of T + 1 random tokens: inputs row[0..T-1], targets row[1..T] (MODEL.md §1).
// BatchT is engram::Batch; a template parameter so that this header need not include the model.
template <class BatchT>
BatchT random_batch(int64_t rows, int64_t seq_len, int32_t vocab, std::mt19937& rng) {
  std::uniform_int_distribution<int32_t> token(0, vocab - 1);
  std::vector<int32_t> inputs, targets;
  for (int64_t r = 0; r < rows; ++r) {
    std::vector<int32_t> row(seq_len + 1);
    for (auto& t : row) t = token(rng);
    inputs.insert(inputs.end(), row.begin(), row.end() - 1);
    targets.insert(targets.end(), row.begin() + 1, row.end());
  }
  return {Tensor::from_vector(inputs, {rows, seq_len}), Tensor::from_vector(targets, {rows, seq_len})};
}

// A batch whose targets are drawn apart from its inputs (all inputs first, then all targets), for
// tests of the loss and its gradients, where targets need not continue the inputs.
template <class BatchT>
BatchT random_unrelated_batch(int64_t rows, int64_t seq_len, int32_t vocab, std::mt19937& rng) {
  std::uniform_int_distribution<int32_t> token(0, vocab - 1);
  std::vector<int32_t> inputs(rows * seq_len), targets(rows * seq_len);
  for (auto& t : inputs) t = token(rng);
  for (auto& t : targets) t = token(rng);
  return {Tensor::from_vector(inputs, {rows, seq_len}), Tensor::from_vector(targets, {rows, seq_len})};
}

// Float tensor of NaN: poisons an output so that any element the kernel does not write shows up.
inline Tensor nan_tensor(const Shape& shape) {
  return Tensor::full(shape, std::numeric_limits<float>::quiet_NaN());
}

// Id tensor of -1 (never a valid id): the integer counterpart of nan_tensor.
template <class T>
Tensor poisoned_ids(const Shape& shape) {
  return Tensor::from_vector(std::vector<T>(shape_numel(shape), T{-1}), shape);
}

// The elements of a float tensor as doubles, for references computed in double.
inline std::vector<double> to_double(const Tensor& t) {
  const std::vector<float> v = t.to_vector<float>();
  return {v.begin(), v.end()};
}

// What a kernel added to an output it accumulates into: after − before, elementwise in float.
inline Tensor added(const Tensor& after, const std::vector<float>& before) {
  EG_ASSERT(after.numel() == static_cast<int64_t>(before.size()), "added: ", after.describe(), " vs ",
            before.size(), " elements");
  Tensor d = Tensor::empty(after.shape());
  for (int64_t i = 0; i < after.numel(); ++i) d.data<float>()[i] = after.data<float>()[i] - before[i];
  return d;
}

// Σ a_i·b_i in index order.
inline double dot(const std::vector<double>& a, const std::vector<double>& b) {
  EG_ASSERT(a.size() == b.size(), "dot of ", a.size(), " and ", b.size(), " elements");
  return std::inner_product(a.begin(), a.end(), b.begin(), 0.0);
}

// Same shape, dtype and bytes (NaN payloads and the sign of zero included).
inline bool bitwise_equal(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() && a.dtype() == b.dtype() && std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}

// Checks |actual_i − expected_i| <= atol + rtol·|expected_i| for every element (NaN never passes) and
// reports, at the caller's line, the first element that does not and how many do not.
inline void expect_close(const Tensor& actual, const std::vector<double>& expected, double rtol, double atol,
                         const std::string& what,
                         std::source_location where = std::source_location::current()) {
  if (actual.numel() != static_cast<int64_t>(expected.size())) {
    ADD_FAILURE_AT(where.file_name(), where.line())
        << what << ": " << actual.numel() << " elements, expected " << expected.size();
    return;
  }
  const float* p = actual.data<float>();
  int64_t first = -1, mismatches = 0;
  for (size_t i = 0; i < expected.size(); ++i) {
    const double tol = atol + rtol * std::fabs(expected[i]);
    const bool close = p[i] == expected[i] || std::fabs(p[i] - expected[i]) <= tol;  // equal infinities pass
    if (close) continue;
    if (first < 0) first = static_cast<int64_t>(i);
    ++mismatches;
  }
  if (first < 0) return;
  const double want = expected[first], tol = atol + rtol * std::fabs(want);
  ADD_FAILURE_AT(where.file_name(), where.line())
      << std::setprecision(9) << what << ": " << mismatches << " of " << expected.size() << " elements differ; the first, at index "
      << first << ", is " << p[first] << " where " << want << " was expected (difference "
      << std::fabs(p[first] - want) << ", tolerance " << tol << " = atol " << atol << " + rtol " << rtol
      << " * |expected|)";
}

// Central differences (L(x + h·e_i) − L(x − h·e_i)) / 2h for every element of x. `loss` reads x,
// which is perturbed in place one element at a time and restored exactly.
inline std::vector<double> numeric_gradient(std::vector<double>& x, const std::function<double()>& loss,
                                            double h) {
  std::vector<double> grad(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    const double saved = x[i];
    x[i] = saved + h;
    const double up = loss();
    x[i] = saved - h;
    const double down = loss();
    x[i] = saved;
    grad[i] = (up - down) / (2.0 * h);
  }
  return grad;
}

// Primality by trial division: slow, obviously right.
inline bool naive_is_prime(int64_t n) {
  if (n < 2) return false;
  for (int64_t d = 2; d * d <= n; ++d)
    if (n % d == 0) return false;
  return true;
}

// ---- files and tools ----

// A new empty directory under the test temp directory, removed with its contents when this object
// goes (unless keep() was called). Its name holds the process id and a per-process count: ctest runs
// each test case as a process of its own, in parallel under -j, and they must not share or delete
// each other's files.
class ScopedTempDir {
 public:
  explicit ScopedTempDir(const std::string& name)
      : path_(std::filesystem::path(::testing::TempDir()) /
              ("engram_" + name + "_" + std::to_string(::getpid()) + "_" + std::to_string(next_serial()))) {
    std::filesystem::remove_all(path_);  // left by an earlier process of the same id
    std::filesystem::create_directories(path_);
  }
  ~ScopedTempDir() {
    std::error_code ignored;  // nothing to do about a directory that cannot be removed
    if (!keep_) std::filesystem::remove_all(path_, ignored);
  }
  ScopedTempDir(const ScopedTempDir&) = delete;
  ScopedTempDir& operator=(const ScopedTempDir&) = delete;

  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(const std::string& name) const { return path_ / name; }
  void keep() { keep_ = true; }  // e.g. after a failure, to look at what the test left

 private:
  static int next_serial() {
    static int serial = 0;
    return serial++;
  }
  std::filesystem::path path_;
  bool keep_ = false;
};

// One scratch directory for the whole process, made on first use and removed at exit.
inline const std::filesystem::path& process_temp_dir() {
  static const ScopedTempDir dir("test");
  return dir.path();
}

// The `width`-byte little-endian unsigned integer at bytes[at]: a binary layout read by hand.
inline uint64_t read_le(const std::string& bytes, size_t at, size_t width) {
  uint64_t v = 0;
  for (size_t i = 0; i < width; ++i) v |= uint64_t{static_cast<uint8_t>(bytes[at + i])} << (8 * i);
  return v;
}

// Overwrites bytes[at, at + width) with the low `width` bytes of v, little-endian.
inline void write_le(std::string& bytes, size_t at, size_t width, uint64_t v) {
  for (size_t i = 0; i < width; ++i) bytes[at + i] = static_cast<char>(v >> (8 * i));
}

// Expects `f` to throw engram::Error whose message contains every one of `parts`; reports failures at
// the caller's line.
inline void expect_error(const std::function<void()>& f, const std::vector<std::string>& parts,
                         std::source_location where = std::source_location::current()) {
  try {
    f();
  } catch (const Error& e) {
    const std::string msg = e.what();
    for (const std::string& part : parts)
      if (msg.find(part) == std::string::npos)
        ADD_FAILURE_AT(where.file_name(), where.line()) << "\"" << part << "\" not in: " << msg;
    return;
  }
  std::string wanted;
  for (const std::string& part : parts) wanted += " \"" + part + "\"";
  ADD_FAILURE_AT(where.file_name(), where.line()) << "no error; expected one mentioning" << wanted;
}

// Trains a small SentencePiece tokenizer: `text` is written to <dir>/corpus.txt, the model to
// <dir>/tok.model (and tok.vocab). Returns the model's path. About a second for a few hundred lines.
inline std::string train_test_tokenizer(const std::filesystem::path& dir, const std::string& text,
                                        int vocab_size, uint64_t seed = TokenizerTrainOptions{}.seed) {
  write_file_atomic(dir / "corpus.txt", text);
  TokenizerTrainOptions options;
  options.input_files = {(dir / "corpus.txt").string()};
  options.model_prefix = (dir / "tok").string();
  options.vocab_size = vocab_size;
  options.seed = seed;
  train_tokenizer(options);
  return (dir / "tok.model").string();
}

// How a shell command ended: its exit code (-1: ended by a signal) and what it wrote.
struct CommandResult {
  int exit_code = -1;
  std::string out, err;
};

// Runs `command` with /bin/sh, capturing its stdout and stderr (all of it: the command runs in a
// subshell, so a list such as "a; b" is redirected as a whole).
inline CommandResult run_command(const std::string& command) {
  const ScopedTempDir io("command_io");
  const std::string out = (io / "stdout").string(), err = (io / "stderr").string();
  const int status = std::system(("(" + command + ") >'" + out + "' 2>'" + err + "'").c_str());
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, read_file(out), read_file(err)};
}

// bfloat16 by round-to-nearest-even (inputs are finite), and back.
inline uint16_t to_bf16(float f) {
  uint32_t u = 0;
  std::memcpy(&u, &f, sizeof(u));
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}
inline float from_bf16(uint16_t h) {
  const uint32_t u = static_cast<uint32_t>(h) << 16;
  float f = 0.0f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

// A host BF16 tensor of f's values rounded to bfloat16, and the f32 tensor of exactly those values.
struct Bf16Values {
  Tensor bf16, f32;
};
inline Bf16Values round_to_bf16(const Tensor& f) {
  Bf16Values out{Tensor::empty(f.shape(), DType::BF16), Tensor::empty(f.shape())};
  auto* bits = static_cast<uint16_t*>(out.bf16.raw());
  for (int64_t i = 0; i < f.numel(); ++i) {
    bits[i] = to_bf16(f.data<float>()[i]);
    out.f32.data<float>()[i] = from_bf16(bits[i]);
  }
  return out;
}

}  // namespace engram::testing_util
