#pragma once
// Engram conditional memory (MODEL.md §4): n-gram hashed table lookup, gated fusion with the
// hidden state, short causal conv. The caller adds the output to the residual stream.
#include <cstdint>
#include <memory>
#include <vector>

#include "model/rmsnorm.h"
#include "runtime/config/config.h"
#include "runtime/parameters.h"

namespace engram {

class ProcessGroups;  // parallel/, declared only (see model/moe.h)
class ShardedTable;
struct PendingLookup;

// The hashing constants of one Engram layer (MODEL.md §4.2); stored in checkpoint metadata.
struct EngramLayerHash {
  int layer = 0;
  std::vector<uint64_t> multipliers;  // max_ngram
  std::vector<int64_t> primes;        // (max_ngram−1)·heads, order (n ascending, j ascending)
  std::vector<int64_t> offsets;       // exclusive prefix sums of primes
  int64_t rows = 0;                   // Σ primes = the layer's table rows
};

// Hash plans of every Engram layer of the model, for a compressed vocabulary of size V'.
std::vector<EngramLayerHash> make_engram_hashing(const ModelConfig& cfg, int64_t vocab_compressed);

class EngramModule {
 public:
  // Registers layers.{l}.engram.table [rows, d_e] (SparseTable, N(0, table_init_std)),
  // engram.{wk,wv}.weight [D, d_mem] (Decay, N(0, init_std)), engram.{wk,wv}.bias [D] (NoDecay, 0),
  // engram.{q_norm,k_norm,conv_norm}.weight [D] (NoDecay, 1), engram.conv.weight [w, D] (NoDecay, 0).
  // groups null: the table is held whole and looked up locally. Otherwise it is registered
  // ShardKind::Rows holding this rank's row range of the table group (layout().table_rows) and
  // forward / backward are collective over groups->table() (ShardedTable).
  EngramModule(const ModelConfig& cfg, const EngramLayerHash& hash, int64_t pad_compressed,
               ParameterRegistry& params, ProcessGroups* groups = nullptr);
  ~EngramModule();

  // Starts the next forward's table lookup for ids_c i32 [B, T] (the compressed token ids): hashes
  // them and gathers the rows, or on a sharded table runs the collective part and starts the
  // transfer back (ShardedTable::start_lookup), so that it overlaps the blocks before this one.
  // Collective over the table group when sharded.
  void start_lookup(const Tensor& ids_c);
  // h [B, T, D], ids_c i32 [B, T] compressed token ids -> y [B, T, D] (the branch output
  // u + SiLU(conv), without the residual). Uses the lookup started for these ids (the same tensor),
  // or starts one. Saves what backward needs.
  Tensor forward(const Tensor& h, const Tensor& ids_c);
  // dy [B, T, D] -> dh [B, T, D] (through the query norm), plus `dh_residual` when given (the
  // gradient reaching h past the module: the residual connection); accumulates dense parameter
  // gradients and appends this micro-batch's table row gradients to the table's Parameter::row_grads.
  Tensor backward(const Tensor& dy, const Tensor& dh_residual = Tensor());

  // Mean α over the last forward's tokens, read when asked (after the step's work is queued, so a
  // GPU forward does not stop for it).
  double last_gate_mean() const;
  const Tensor& last_scores() const;  // gate scores s [B·T] of the last forward, on the model's device
  // Lookup traffic and dedup (null without process groups).
  const ShardedTable* sharded_table() const { return sharded_.get(); }

 private:
  struct Saved;
  struct Lookup;
  const ModelConfig& cfg_;
  EngramLayerHash hash_;
  int64_t pad_c_;
  // hash_ as i64 tensors for kernels::ngram_hash, moved to the ids' device by start_lookup
  Tensor multipliers_, primes_, offsets_;
  // Registration order = MODEL.md §7 order.
  Parameter& table_;
  Parameter& wk_;
  Parameter& wv_;
  Parameter& bk_;
  Parameter& bv_;
  RMSNormModule q_norm_, k_norm_, conv_norm_;
  Parameter& conv_;
  std::unique_ptr<ShardedTable> sharded_;
  std::unique_ptr<Lookup> lookup_;  // started, not yet used by a forward
  std::shared_ptr<Saved> saved_;
};

}  // namespace engram
