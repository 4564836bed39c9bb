#include "parallel/moe_dispatcher.h"

#include "kernels/embedding.h"
#include "kernels/permute.h"

namespace engram {

namespace {

constexpr int64_t kFloatBytes = sizeof(float), kRoutingBytes = sizeof(int32_t), kCountBytes = sizeof(int64_t);

// Rows travel in f32, or in bf16 as the expert products take them (half the bytes).
void check_row_dtype(const Tensor& rows, const char* what) {
  EG_CHECK(rows.dtype() == DType::F32 || rows.dtype() == DType::BF16, what, " ", rows.describe(),
           " must be f32 or bf16");
}

// Exclusive prefix sums: where each rank's block starts.
std::vector<int64_t> starts(const std::vector<int64_t>& counts) {
  std::vector<int64_t> out(counts.size(), 0);
  for (size_t r = 1; r < counts.size(); ++r) out[r] = out[r - 1] + counts[r - 1];
  return out;
}

}  // namespace

ExpertDispatcher::ExpertDispatcher(Communicator& ep_group, int64_t n_experts)
    : group_(ep_group),
      n_experts_(n_experts),
      local_experts_(expert_range(n_experts, ep_group.size(), ep_group.rank())) {
  EG_CHECK(n_experts >= 1, "ExpertDispatcher: n_experts = ", n_experts, " must be >= 1");
}

Tensor ExpertDispatcher::forward(const Tensor& x_in, const Tensor& topk_idx, const Tensor& topk_w,
                                 const ExpertForwardFn& experts, const Tensor& onto) {
  check_row_dtype(x_in, "dispatcher x");
  check_dtype(topk_idx, DType::I32, "dispatcher topk_idx");
  check_dtype(topk_w, DType::F32, "dispatcher topk_w");
  check_shape(topk_w, topk_idx.shape(), "dispatcher topk_w");
  const int64_t n = topk_idx.rows(), k = topk_idx.cols(), d = x_in.cols();
  EG_ASSERT(x_in.rows() == n, "dispatcher x ", x_in.describe(), " needs one row per token of topk_idx ",
            topk_idx.describe());
  const Device device = x_in.device();
  EG_CHECK(topk_w.device() == device, "dispatcher topk_w ", topk_w.describe(), " is not on ", device_name(device),
           " with x");
  if (onto.defined()) {
    check_dtype(onto, DType::F32, "dispatcher onto");
    EG_CHECK(onto.numel() == n * d && onto.device() == device, "dispatcher onto ", onto.describe(), " is not [", n,
             ", ", d, "] on ", device_name(device));
  }
  const int p = group_.size();
  const int64_t per_rank = local_experts_.size();
  const Tensor x = x_in.view({n, d});
  // The exchange plan is index work on the host (a host copy of the routing); the row gathers and
  // the combine run on the tensors' device. A device-side plan would save the copies and waits.
  const std::vector<int32_t> topk_host = topk_idx.to_vector<int32_t>();
  const int32_t* expert = topk_host.data();

  Saved s;
  // 1. Permute by destination: token t gets one row per destination rank among its slots; the row's
  //    routing entry for slot k names the local expert there (or −1: that slot lives elsewhere).
  std::vector<int32_t> dest(n * k);
  s.send_rows.assign(p, 0);
  s.home_out_rows.assign(p, 0);
  for (int64_t a = 0; a < n * k; ++a) {
    EG_CHECK(expert[a] >= 0 && expert[a] < n_experts_, "dispatcher: token ", a / k, " slot ", a % k,
             " names expert ", expert[a], ", outside [0, ", n_experts_, ")");
    dest[a] = static_cast<int32_t>(expert[a] / per_rank);
    ++s.home_out_rows[dest[a]];
  }
  // The earlier slot of the same token with the same destination, or −1 (that slot opens the row).
  auto first_slot_with_dest = [&](int64_t t, int64_t slot) {
    for (int64_t j = 0; j < slot; ++j)
      if (dest[t * k + j] == dest[t * k + slot]) return j;
    return int64_t{-1};
  };
  for (int64_t t = 0; t < n; ++t)
    for (int64_t slot = 0; slot < k; ++slot)
      if (first_slot_with_dest(t, slot) < 0) ++s.send_rows[dest[t * k + slot]];
  const int64_t n_sent = Communicator::total(s.send_rows);
  std::vector<int64_t> next_row = starts(s.send_rows);
  std::vector<int32_t> send_token(n_sent);
  std::vector<int32_t> routing(n_sent * k, -1);
  std::vector<int64_t> row_of_slot(k);
  for (int64_t t = 0; t < n; ++t) {
    for (int64_t slot = 0; slot < k; ++slot) {
      const int64_t a = t * k + slot, first = first_slot_with_dest(t, slot);
      row_of_slot[slot] = first < 0 ? next_row[dest[a]]++ : row_of_slot[first];
      send_token[row_of_slot[slot]] = static_cast<int32_t>(t);
      routing[row_of_slot[slot] * k + slot] = static_cast<int32_t>(expert[a] % per_rank);
    }
  }
  // Outputs come back by destination, each destination's rows in sent order, slots ascending.
  std::vector<int32_t> home_position(n * k);
  int32_t next_output = 0;
  for (int64_t row = 0; row < n_sent; ++row)
    for (int64_t slot = 0; slot < k; ++slot)
      if (routing[row * k + slot] >= 0) home_position[send_token[row] * k + slot] = next_output++;
  s.send_token = Tensor::from_vector(send_token).to(device);
  s.home_position = Tensor::from_vector(home_position).to(device);

  // 2. Exchange counts, then token rows and routing rows, received by (source rank, token).
  s.recv_rows = group_.exchange_counts(s.send_rows);
  Tensor x_send = Tensor::empty({n_sent, d}, x_in.dtype(), device);
  kernels::embedding_gather(x, s.send_token, x_send);
  const Tensor x_recv = group_.all_to_all_v_rows(x_send, s.send_rows, s.recv_rows);
  // Routing rows stay host metadata (an NCCL group sends them over its host group).
  Tensor routing_recv =
      group_.all_to_all_v_rows(Tensor::from_vector(routing, {n_sent, k}), s.send_rows, s.recv_rows);
  const int64_t n_recv = x_recv.rows();

  // 3. Assignments by local expert in (source, token, slot) order; slots that live elsewhere go to
  //    an extra last block, which is never computed. The sort is index work too: on the host.
  int32_t* local = routing_recv.data<int32_t>();
  for (int64_t a = 0; a < n_recv * k; ++a)
    if (local[a] < 0) local[a] = static_cast<int32_t>(per_rank);
  const kernels::ExpertSort sort = kernels::sort_by_expert(routing_recv, static_cast<int>(per_rank + 1));
  expert_offsets_.assign(sort.offsets.begin(), sort.offsets.end() - 1);
  const int64_t n_assigned = expert_offsets_.back();
  s.sorted_row = sort.sorted_token.slice(0, n_assigned).to(device);
  Tensor expert_in = Tensor::empty({n_assigned, d}, x_in.dtype(), device);
  kernels::embedding_gather(x_recv, s.sorted_row, expert_in);
  const Tensor expert_out = experts(expert_in, expert_offsets_);
  check_shape(expert_out, {n_assigned, d}, "expert function output");
  check_row_dtype(expert_out, "expert function output");
  EG_CHECK(expert_out.device() == device, "expert function output ", expert_out.describe(), " is not on ",
           device_name(device), " with its input");

  // 4. Outputs back home, in (source, token, slot) order.
  const int32_t* position = sort.position.data<int32_t>();
  const std::vector<int64_t> recv_start = starts(s.recv_rows);
  std::vector<int32_t> return_order, expert_order(n_assigned);
  return_order.reserve(n_assigned);
  s.return_rows.assign(p, 0);
  for (int src = 0; src < p; ++src) {
    for (int64_t row = recv_start[src]; row < recv_start[src] + s.recv_rows[src]; ++row) {
      for (int64_t slot = 0; slot < k; ++slot) {
        if (local[row * k + slot] == per_rank) continue;
        expert_order[position[row * k + slot]] = static_cast<int32_t>(return_order.size());
        return_order.push_back(position[row * k + slot]);
        ++s.return_rows[src];
      }
    }
  }
  s.expert_order = Tensor::from_vector(expert_order).to(device);
  Tensor out_send = Tensor::empty({n_assigned, d}, expert_out.dtype(), device);
  kernels::embedding_gather(expert_out, Tensor::from_vector(return_order).to(device), out_send);
  s.out_home = group_.all_to_all_v_rows(out_send, s.return_rows, s.home_out_rows);

  // 5. Weighted combine in slot order (onto what `onto` holds, when given).
  Tensor y = onto.defined() ? onto : Tensor::empty(x_in.shape(), DType::F32, device);
  Tensor y_flat = y.view({n, d});
  kernels::combine_expert_outputs(s.out_home, s.home_position, topk_w, y_flat, /*accumulate=*/onto.defined());
  s.topk_w = topk_w;

  const int64_t token_bytes = d * static_cast<int64_t>(dtype_size(x_in.dtype())) + k * kRoutingBytes;
  const int64_t out_bytes = d * static_cast<int64_t>(dtype_size(expert_out.dtype())),
                counts_bytes = (p - 1) * kCountBytes;
  forward_stats_.rows_sent = group_.to_others(s.send_rows) + group_.to_others(s.return_rows);
  forward_stats_.rows_received = group_.to_others(s.recv_rows) + group_.to_others(s.home_out_rows);
  forward_stats_.bytes_sent =
      counts_bytes + group_.to_others(s.send_rows) * token_bytes + group_.to_others(s.return_rows) * out_bytes;
  forward_stats_.bytes_received =
      counts_bytes + group_.to_others(s.recv_rows) * token_bytes + group_.to_others(s.home_out_rows) * out_bytes;
  s.valid = true;
  saved_ = std::move(s);
  return y;
}

ExpertDispatcher::Grads ExpertDispatcher::backward(const Tensor& dy_in,
                                                   const ExpertBackwardFn& experts_backward) {
  EG_ASSERT(saved_.valid, "ExpertDispatcher::backward without a forward");
  const Saved s = std::move(saved_);
  saved_ = Saved{};
  const int64_t n = s.topk_w.rows(), k = s.topk_w.cols(), d = s.out_home.cols();
  EG_ASSERT(dy_in.rows() == n && dy_in.cols() == d, "dispatcher backward: dy ", dy_in.describe(), " is not [",
            n, ", ", d, "]");
  const Device device = s.out_home.device();
  EG_CHECK(dy_in.device() == device, "dispatcher backward: dy ", dy_in.describe(), " is not on ",
           device_name(device), " with the forward's tensors");
  const Tensor dy = dy_in.view({n, d});

  // 5'. Gradients of each assignment's output and of the routing weights, on the home rank.
  Grads grads{Tensor::zeros(dy_in.shape(), DType::F32, device), Tensor::empty({n, k}, DType::F32, device)};
  // The outputs' gradients travel in the outputs' dtype (bf16: what the expert products take).
  Tensor d_out_home = Tensor::empty(s.out_home.shape(), s.out_home.dtype(), device);
  kernels::combine_expert_outputs_backward(dy, s.out_home, s.home_position, s.topk_w, d_out_home,
                                           grads.d_topk_w);

  // 4'. To the expert ranks, back in expert order.
  const Tensor d_returned = group_.all_to_all_v_rows(d_out_home, s.home_out_rows, s.return_rows);
  const int64_t n_assigned = d_returned.rows();
  Tensor d_expert_out = Tensor::empty({n_assigned, d}, d_returned.dtype(), device);
  kernels::embedding_gather(d_returned, s.expert_order, d_expert_out);

  // 3'. Expert backward; each received row sums its assignments in local-expert order.
  const Tensor d_expert_in = experts_backward(d_expert_out, expert_offsets_);
  check_shape(d_expert_in, {n_assigned, d}, "expert backward output");
  check_row_dtype(d_expert_in, "expert backward output");
  Tensor dx_recv = Tensor::zeros({Communicator::total(s.recv_rows), d}, DType::F32, device);
  kernels::embedding_scatter_add(d_expert_in, s.sorted_row, dx_recv);

  // 2'. and 1'. Home, summed over destination ranks in ascending order.
  const Tensor dx_sent = group_.all_to_all_v_rows(dx_recv, s.recv_rows, s.send_rows);
  Tensor dx_flat = grads.dx.view({n, d});
  kernels::embedding_scatter_add(dx_sent, s.send_token, dx_flat);

  // The outputs' gradients in their dtype, the input gradients' sums in f32.
  const int64_t d_out_bytes = d * static_cast<int64_t>(dtype_size(d_out_home.dtype())), dx_bytes = d * kFloatBytes;
  backward_stats_.rows_sent = group_.to_others(s.home_out_rows) + group_.to_others(s.recv_rows);
  backward_stats_.rows_received = group_.to_others(s.return_rows) + group_.to_others(s.send_rows);
  backward_stats_.bytes_sent =
      group_.to_others(s.home_out_rows) * d_out_bytes + group_.to_others(s.recv_rows) * dx_bytes;
  backward_stats_.bytes_received =
      group_.to_others(s.return_rows) * d_out_bytes + group_.to_others(s.send_rows) * dx_bytes;
  return grads;
}

}  // namespace engram
