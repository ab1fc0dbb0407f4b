// bnlab's fused CPU batch-norm kernels, written from scratch (no call to torch's batch norm).
//
// Registered as torch.ops.bnlab.batch_norm (with its autograd: the closed-form backward, in
// C++, so no Python runs in backward) and the raw kernels torch.ops.bnlab.{forward_train,
// forward_eval, backward, backward_act}. Two memory layouts:
//   planar: x contiguous as (N, C, L): every (n, c) row of L values is contiguous; threads
//           take blocks of samples (as the layers around it do) with per-thread partial
//           sums, or for large inputs whole channels, each channel's two passes back to
//           back (the second finds the channel in cache): see split_by_samples;
//   rows:   x as (M, C) rows of C values: 2-D input, and channels_last input (N, *, C);
//           threads take row blocks with per-thread partial sums.
// An activation (ReLU or sigmoid) may follow the affine transform in the same pass; its
// backward recomputes it from the saved input instead of saving the output (as in-place
// activated batch norm does), so a fused layer keeps one activation-sized tensor, not two.
// A 2x2 average pooling (stride 2) may follow the activation (``pool=2``, planar (N, C, H, W)
// input with even H and W): the pooled output is formed from the activated rows without
// writing the full-size one, and backward spreads the pooled gradient plane by plane.
// Statistics are accumulated in double. The variance uses sums shifted by one sample of the
// channel (the "shifted data" algorithm): with the shift within a few standard deviations of
// the mean, S2 - S1^2/n cannot cancel catastrophically, and it needs one pass, not two.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/autograd/saved_variable.h>
#include <torch/csrc/autograd/variable.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <tuple>
#include <vector>

namespace {

using at::Tensor;

constexpr int64_t kGrain = 1 << 15;  // elements of work below which one thread is faster

#include "autograd_node.h"
#include "bn_activation.h"
#include "bn_layout.h"
#include "bn_planar.h"
#include "bn_forward.h"
#include "bn_backward.h"

// ---- autograd -------------------------------------------------------------------------------

bool defined(const c10::optional<Tensor>& t) { return t.has_value() && t->defined(); }

std::vector<int64_t> reduce_dims(const Tensor& x) {
  std::vector<int64_t> dims{0};
  for (int64_t d = 2; d < x.dim(); ++d) dims.push_back(d);
  return dims;
}

std::vector<int64_t> channel_shape(const Tensor& x) {
  std::vector<int64_t> shape(x.dim(), 1);
  shape[1] = -1;
  return shape;
}

// The same closed form with differentiable ATen ops, for a backward that is itself being
// differentiated (double backward): the batch statistics are recomputed from x in the graph.
std::vector<Tensor> differentiable_grads(const Tensor& dy, const Tensor& x, Tensor mean,
                                         Tensor invstd, const Tensor& weight, bool train,
                                         double eps, bool need_dx, bool need_dw, bool need_db) {
  const auto dims = reduce_dims(x);
  const auto shape = channel_shape(x);
  if (train) {
    auto [var, m] = at::var_mean(x, dims, /*correction=*/0, /*keepdim=*/false);
    mean = m;
    invstd = at::rsqrt(var + eps);
  }
  Tensor xmu = x - mean.view(shape);
  Tensor sum_dy = dy.sum(dims);
  Tensor sum_dy_xmu = (dy * xmu).sum(dims);
  Tensor dx, dw, db;
  if (need_dx) {
    Tensor scale = weight.defined() ? invstd * weight : invstd;
    if (train) {
      const double n = static_cast<double>(x.numel() / x.size(1));
      Tensor proj = invstd * invstd * sum_dy_xmu / n;
      dx = (dy - (sum_dy / n).view(shape) - xmu * proj.view(shape)) * scale.view(shape);
    } else {
      dx = dy * scale.view(shape);
    }
  }
  if (need_dw) dw = sum_dy_xmu * invstd;
  if (need_db) db = sum_dy;
  return {dx, dw, db};
}

// The same with the activation: its gradient taken with differentiable ops on z recomputed
// from x (and, in training, from x's own statistics), then the closed form above.
std::vector<Tensor> differentiable_grads_act(const Tensor& dy, const Tensor& x, Tensor mean,
                                             Tensor invstd, const Tensor& weight,
                                             const Tensor& bias, int64_t act, bool train,
                                             double eps, bool need_dx, bool need_dw,
                                             bool need_db) {
  const auto shape = channel_shape(x);
  Tensor m = mean, is = invstd;
  if (train) {
    auto [var, mu] = at::var_mean(x, reduce_dims(x), /*correction=*/0, /*keepdim=*/false);
    m = mu;
    is = at::rsqrt(var + eps);
  }
  Tensor z = (x - m.view(shape)) * is.view(shape);
  if (weight.defined()) z = z * weight.view(shape);
  if (bias.defined()) z = z + bias.view(shape);
  Tensor dz;
  if (act == kActRelu) {
    // torch's own relu gradient: differentiable in z too (zero), so the bias stays in the
    // graph of a double backward, as with torch.relu.
    dz = at::threshold_backward(dy, z, 0);
  } else {
    Tensor sig = at::sigmoid(z);
    dz = dy * sig * (1 - sig);
  }
  return differentiable_grads(dz, x, mean, invstd, weight, train, eps, need_dx, need_dw,
                              need_db);
}

// The backward node, built by hand as PyTorch's generated nodes are (lighter than a
// torch::autograd::Function): edges to x, weight, bias (those given).
struct BatchNormBackward : public torch::autograd::Node {
  torch::autograd::SavedVariable x, weight, bias;  // bias: only with an activation
  Tensor mean, invstd;  // (C,) statistics, outside autograd
  bool training = true, has_weight = false, has_bias = false;
  double eps = 1e-5;
  int64_t activation = kActNone;
  int64_t pool = 1;  // 2: the output was 2x2 average-pooled; grads[0] is the pooled one's

  std::string name() const override { return "BnlabBatchNormBackward"; }

  // Node's mutex_ guards the saved state, as in torch's generated nodes: another thread's
  // backward through this node may release it (retain_graph=False) while this one unpacks.
  void release_variables() override {
    std::lock_guard<std::mutex> lock(mutex_);
    x.reset_data();
    weight.reset_data();
    bias.reset_data();
    mean.reset();
    invstd.reset();
  }

  torch::autograd::variable_list apply(torch::autograd::variable_list&& grads) override {
    Tensor dy = grads[0];
    const size_t n_out = 1 + has_weight + has_bias;
    if (!dy.defined()) return torch::autograd::variable_list(n_out);
    Tensor xv, w, b, m, inv;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      xv = x.unpack();
      w = weight.unpack();
      b = activation == kActNone ? Tensor() : bias.unpack();
      m = mean;
      inv = invstd;
    }
    const bool need_dx = task_should_compute_output(0);
    const bool need_dw = has_weight && task_should_compute_output(1);
    const bool need_db = has_bias && task_should_compute_output(has_weight ? 2 : 1);
    Tensor dx, dw, db;
    // Differentiable ATen ops when this backward is itself differentiated, or when the
    // gradient has no storage of its own for the kernels to read: batched gradients
    // (autograd.grad(is_grads_batched=True), vmap) are wrappers, ATen ops batch them.
    if (at::GradMode::is_enabled() || !dy.has_storage()) {
      if (pool == 2) {  // the pooling's own gradient, differentiable too
        dy = at::avg_pool2d_backward(dy, xv, {2, 2}, {2, 2}, {0, 0}, false, true,
                                     c10::nullopt);
      }
      auto g = activation == kActNone
                   ? differentiable_grads(dy, xv, m, inv, w, training, eps, need_dx,
                                          need_dw, need_db)
                   : differentiable_grads_act(dy, xv, m, inv, w, b, activation, training,
                                              eps, need_dx, need_dw, need_db);
      dx = g[0], dw = g[1], db = g[2];
    } else {
      auto wo = w.defined() ? c10::optional<Tensor>(w) : c10::nullopt;
      auto bo = b.defined() ? c10::optional<Tensor>(b) : c10::nullopt;
      std::tie(dx, dw, db) = backward_act(dy, xv, m, inv, wo, bo, activation, training,
                                          need_dx, need_dw, need_db, pool);
    }
    torch::autograd::variable_list out{dx};
    if (has_weight) out.push_back(dw);
    if (has_bias) out.push_back(db);
    return out;
  }
};

// A module's batch counter (num_batches_tracked), incremented by the op in training.
void check_counter(const Tensor& counter) {
  TORCH_CHECK(counter.scalar_type() == at::kLong && counter.numel() == 1 && counter.is_cpu(),
              "bnlab: num_batches_tracked must be a one-element int64 CPU tensor");
  TORCH_CHECK(counter.is_contiguous(), "bnlab: num_batches_tracked must be contiguous");
}

// num_batches_tracked += 1, in place (cheaper here than a Python call).
void count_batch(const Tensor& counter) {
  counter.data_ptr<int64_t>()[0] += 1;
  if (!counter.is_inference()) torch::autograd::impl::bump_version(counter);
}

// The op with autograd: runs the fused forward and, when a gradient is wanted, records a
// BatchNormBackward node; the running statistics (and in training the batch counter, when
// given) are updated in place (versions bumped).
Tensor batch_norm(const Tensor& x, const c10::optional<Tensor>& weight,
                  const c10::optional<Tensor>& bias, const c10::optional<Tensor>& running_mean,
                  const c10::optional<Tensor>& running_var, bool training, double momentum,
                  double eps, int64_t activation,
                  const c10::optional<Tensor>& num_batches_tracked, int64_t pool) {
  const bool count = training && defined(num_batches_tracked);
  if (count) check_counter(*num_batches_tracked);
  torch::autograd::variable_list inputs{x};
  if (defined(weight)) inputs.push_back(*weight);
  if (defined(bias)) inputs.push_back(*bias);
  const bool record = torch::autograd::compute_requires_grad(inputs);
  Tensor y, mean, invstd;
  {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    if (training) {
      std::tie(y, mean, invstd) =
          forward_train(x, weight, bias, running_mean, running_var, momentum, eps, activation,
                        pool);
    } else {
      std::tie(y, invstd) =
          forward_eval(x, *running_mean, *running_var, weight, bias, eps, activation, pool);
      // Saved for backward as it is now: a later training step updates the buffer in place.
      if (record) mean = running_mean->clone();
    }
  }
  // Counted once the forward (whose checks come first) has succeeded: a rejected call
  // leaves the counter as it was.
  if (count) count_batch(*num_batches_tracked);
  if (training) {
    if (defined(running_mean)) torch::autograd::impl::bump_version(*running_mean);
    if (defined(running_var)) torch::autograd::impl::bump_version(*running_var);
  }
  if (!record) return y;
  auto node = bnlab::make_node<BatchNormBackward>();
  node->set_next_edges(torch::autograd::collect_next_edges(inputs));
  // Saved: the input and two (C,) statistics, as torch's kernel saves; the rest (with an
  // activation: its input and output too) is recomputed.
  node->x = torch::autograd::SavedVariable(x, false);
  if (defined(weight)) node->weight = torch::autograd::SavedVariable(*weight, false);
  if (activation != kActNone && defined(bias)) {
    node->bias = torch::autograd::SavedVariable(*bias, false);
  }
  node->activation = activation;
  node->pool = pool;
  node->mean = mean;
  node->invstd = invstd;
  node->training = training;
  node->has_weight = defined(weight);
  node->has_bias = defined(bias);
  node->eps = eps;
  torch::autograd::set_history(y, node);
  return y;
}

}  // namespace

TORCH_LIBRARY(bnlab, m) {
  m.def(
      "batch_norm(Tensor input, Tensor? weight, Tensor? bias, Tensor(a!)? running_mean, "
      "Tensor(b!)? running_var, bool training, float momentum, float eps, int activation=0, "
      "Tensor(c!)? num_batches_tracked=None, int pool=1) -> Tensor");
  m.def(
      "forward_train(Tensor input, Tensor? weight, Tensor? bias, Tensor(a!)? running_mean, "
      "Tensor(b!)? running_var, float momentum, float eps, int activation=0, int pool=1) "
      "-> (Tensor, Tensor, Tensor)");
  m.def(
      "forward_eval(Tensor input, Tensor running_mean, Tensor running_var, Tensor? weight, "
      "Tensor? bias, float eps, int activation=0, int pool=1) -> (Tensor, Tensor)");
  m.def(
      "backward(Tensor grad_out, Tensor input, Tensor mean, Tensor invstd, Tensor? weight, "
      "bool train, bool need_dx, bool need_dw, bool need_db) -> (Tensor, Tensor, Tensor)");
  m.def(
      "backward_act(Tensor grad_out, Tensor input, Tensor mean, Tensor invstd, Tensor? weight, "
      "Tensor? bias, int activation, bool train, bool need_dx, bool need_dw, bool need_db, "
      "int pool=1) "
      "-> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(bnlab, Autograd, m) {
  m.impl("batch_norm", &batch_norm);
}

TORCH_LIBRARY_IMPL(bnlab, CPU, m) {
  m.impl("forward_train", &forward_train);
  m.impl("forward_eval", &forward_eval);
  m.impl("backward", &backward_kernel);
  m.impl("backward_act", &backward_act);
  m.impl("batch_norm", &batch_norm);  // inference tensors (no autograd key) land here
}
