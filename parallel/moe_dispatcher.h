#pragma once
// Dropless expert-parallel token dispatcher (DESIGN.md decision 4, Megatron's dispatcher stages).
//
// The expert-parallel group of P ranks holds E routed experts in contiguous blocks of E/P. Every
// rank routes its own N tokens ("home" rank) and serves the tokens sent to its experts ("expert"
// rank); one rank is both.
//
// forward(x [N,D], topk_idx i32 [N,K] global expert ids, topk_w [N,K]):
//   1. permute by destination: each token is sent ONCE per destination rank that holds at least one
//      of its K experts (rows ordered by (destination, token)), with a routing row of K i32: the
//      local expert of slot k on that rank, or −1;
//   2. exchange counts, all_to_all_v the token rows and their routing rows. The receive buffer is
//      ordered by (source rank, token index), whatever the timing;
//   3. group the received (row, slot) assignments by local expert in (source, token, slot) order
//      (kernels::sort_by_expert) and run the caller's grouped expert function on them;
//   4. all_to_all_v each assignment's output back to its home rank;
//   5. combine: y_t = Σ_k w_tk · out_tk in slot order (kernels::combine_expert_outputs), the same
//      combine a single-rank MoELayer does.
// backward(dy [N,D]) reverses every stage:
//   5'. d_out_tk = w_tk · dy_t and d_topk_w[t,k] = <dy_t, out_tk> on the home rank;
//   4'. d_out back to the expert ranks; 3'. the caller's grouped expert backward (expert gradients
//   stay on the expert rank; the expert-data-parallel group sums them later);
//   2'. each received row's input gradient summed over its assignments there, sent home;
//   1'. dx_t summed over destination ranks. Both sums run in ascending global expert order (local
//   experts ascending within a rank, ranks ascending); the single-rank MoELayer adds a token's rows
//   in slot order, so the two agree to float rounding.
//
// Devices: x, topk_w and dy may be CPU or CUDA tensors (the same device; topk_idx anywhere), and every
// result is on that device, bitwise the result for CPU tensors. Dtypes: x's rows travel as they are
// (f32, or bf16 as the expert products take them: the MoE sends its rounded rows under bf16 matmuls),
// the experts' outputs and their gradients in the dtype the expert function returns, each received
// row's input gradient as an f32 sum; y, dx and d_topk_w are f32. The exchange plan (destinations,
// routing rows, the sort by expert) is index work on host copies; the row gathers, scatters and the
// combine run as kernels on the tensors' device. The expert functions get and return tensors there.
#include <cstdint>
#include <functional>
#include <vector>

#include "parallel/communicator.h"
#include "parallel/process_groups.h"

namespace engram {

// The local experts on rows grouped by local expert: rows [A, D] and offsets (local experts + 1
// entries; expert i owns rows [offsets[i], offsets[i+1]), possibly empty) -> outputs [A, D].
using ExpertForwardFn = std::function<Tensor(const Tensor& rows, const std::vector<int64_t>& offsets)>;
// Backward of the last ExpertForwardFn call: d_outputs [A, D] -> d_rows [A, D]; accumulates the local
// experts' parameter gradients.
using ExpertBackwardFn = std::function<Tensor(const Tensor& d_outputs, const std::vector<int64_t>& offsets)>;

// Traffic of one forward or backward to and from OTHER ranks (what stays on the rank is a copy):
// rows of D values (tokens, expert outputs or their gradients, in the dtypes they travel in) and bytes
// including the routing rows and the counts exchange.
struct DispatchStats {
  int64_t rows_sent = 0, rows_received = 0;
  int64_t bytes_sent = 0, bytes_received = 0;
  bool operator==(const DispatchStats&) const = default;
};

class ExpertDispatcher {
 public:
  // ep_group: the expert-parallel group; n_experts: routed experts of the layer (divisible by its size).
  ExpertDispatcher(Communicator& ep_group, int64_t n_experts);

  // Returns y [N, D]: a new tensor, or `onto` ([N, D] f32) when given, with the combine's sum added
  // to what it holds (the MoE's shared experts' output: no separate add). Collective over the group:
  // every rank calls it, N may be 0.
  Tensor forward(const Tensor& x, const Tensor& topk_idx, const Tensor& topk_w, const ExpertForwardFn& experts,
                 const Tensor& onto = Tensor());

  struct Grads {
    Tensor dx;        // [N, D]
    Tensor d_topk_w;  // [N, K]
  };
  // Backward of the last forward. Collective over the group.
  Grads backward(const Tensor& dy, const ExpertBackwardFn& experts_backward);

  IndexRange local_experts() const { return local_experts_; }
  // Row blocks of the last forward's local experts (offsets[i+1] − offsets[i] = load of local expert i).
  const std::vector<int64_t>& local_expert_offsets() const { return expert_offsets_; }
  const DispatchStats& last_forward_stats() const { return forward_stats_; }
  const DispatchStats& last_backward_stats() const { return backward_stats_; }

 private:
  // What backward needs from forward; released by backward.
  struct Saved {
    bool valid = false;
    // Home side.
    Tensor send_token;                   // i32 [S]: token of each sent row, ordered by (destination, token)
    std::vector<int64_t> send_rows;      // token rows sent to each rank
    std::vector<int64_t> home_out_rows;  // expert outputs coming back from each rank
    Tensor home_position;                // i32 [N·K]: row of out_home holding assignment (t, k)
    Tensor topk_w;                       // [N, K]
    Tensor out_home;                     // [N·K, D]: the outputs of this rank's assignments
    // Expert side.
    std::vector<int64_t> recv_rows;    // token rows received from each rank
    std::vector<int64_t> return_rows;  // outputs returned to each rank
    Tensor sorted_row;                 // i32 [A]: received row of each expert-ordered assignment
    Tensor expert_order;               // i32 [A]: expert-ordered index of each returned output
  };

  Communicator& group_;
  int64_t n_experts_;
  IndexRange local_experts_;
  Saved saved_;
  std::vector<int64_t> expert_offsets_;
  DispatchStats forward_stats_, backward_stats_;
};

}  // namespace engram
