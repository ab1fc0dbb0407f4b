// 2x2 average pooling with stride 2 (LeNet's pooling) for contiguous NCHW CPU tensors.
//
// Registered as torch.ops.bnlab_pool.avg_pool2x2 (with its autograd, in C++) and the raw
// kernels torch.ops.bnlab_pool.{forward, backward}. Results are bit-identical to
// torch.nn.functional.avg_pool2d(x, 2): the same summation order, and a division by 4 (the
// multiplication by 0.25 is exact). An odd last row or column is dropped, as there.
// Memory-bound: one read of the input and one write of the output per pass; planes are
// split between threads only when there is enough work.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/autograd/variable.h>
#include <torch/library.h>

#include "autograd_node.h"

#include <vector>

namespace {

using at::Tensor;

constexpr int64_t kGrain = 1 << 15;  // input elements below which one thread is faster

void check_input(const Tensor& x, const char* what) {
  TORCH_CHECK(x.device().is_cpu(), "bnlab_pool: ", what, " must be a CPU tensor");
  TORCH_CHECK(x.dim() == 4, "bnlab_pool: ", what, " must be 4-D (N, C, H, W), got ",
              x.dim(), "-D");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              "bnlab_pool: ", what, " must be float32 or float64, got ", x.scalar_type());
}

template <typename T>
void pool_forward(const T* x, T* y, int64_t planes, int64_t h, int64_t w) {
  const int64_t ho = h / 2, wo = w / 2;
  at::parallel_for(0, planes, std::max<int64_t>(1, kGrain / (h * w)), [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const T* plane = x + p * h * w;
      T* out = y + p * ho * wo;
      for (int64_t i = 0; i < ho; ++i) {
        const T* r0 = plane + 2 * i * w;
        const T* r1 = r0 + w;
        T* o = out + i * wo;
        for (int64_t j = 0; j < wo; ++j) {
          // torch's order: rows outer, columns inner, from zero; then / 4
          o[j] = ((((T(0) + r0[2 * j]) + r0[2 * j + 1]) + r1[2 * j]) + r1[2 * j + 1]) *
                 T(0.25);
        }
      }
    }
  });
}

template <typename T>
void pool_backward(const T* g, T* dx, int64_t planes, int64_t h, int64_t w) {
  const int64_t ho = h / 2, wo = w / 2;
  at::parallel_for(0, planes, std::max<int64_t>(1, kGrain / (h * w)), [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const T* gp = g + p * ho * wo;
      T* plane = dx + p * h * w;
      for (int64_t i = 0; i < ho; ++i) {
        T* r0 = plane + 2 * i * w;
        T* r1 = r0 + w;
        const T* gi = gp + i * wo;
        for (int64_t j = 0; j < wo; ++j) {
          const T v = gi[j] * T(0.25);
          r0[2 * j] = v;
          r0[2 * j + 1] = v;
          r1[2 * j] = v;
          r1[2 * j + 1] = v;
        }
        if (w & 1) r0[w - 1] = r1[w - 1] = T(0);
      }
      if (h & 1) std::fill(plane + (h - 1) * w, plane + h * w, T(0));
    }
  });
}

Tensor forward(const Tensor& input) {
  check_input(input, "input");
  const Tensor x = input.contiguous();
  const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
  TORCH_CHECK(h >= 2 && w >= 2, "bnlab_pool: input height and width must be at least 2, got ",
              h, "x", w);
  Tensor y = at::empty({n, c, h / 2, w / 2}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "bnlab_pool_forward", [&] {
    pool_forward(x.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(), n * c, h, w);
  });
  return y;
}

Tensor backward(const Tensor& grad_out, c10::IntArrayRef input_size) {
  check_input(grad_out, "grad_out");
  TORCH_CHECK(input_size.size() == 4, "bnlab_pool: input_size must have 4 entries");
  const int64_t n = input_size[0], c = input_size[1], h = input_size[2], w = input_size[3];
  TORCH_CHECK(grad_out.sizes() == c10::IntArrayRef({n, c, h / 2, w / 2}),
              "bnlab_pool: grad_out has shape ", grad_out.sizes(), ", expected ",
              c10::IntArrayRef({n, c, h / 2, w / 2}));
  const Tensor g = grad_out.contiguous();
  Tensor dx = at::empty(input_size, g.options());
  AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "bnlab_pool_backward", [&] {
    pool_backward(g.const_data_ptr<scalar_t>(), dx.mutable_data_ptr<scalar_t>(), n * c, h, w);
  });
  return dx;
}

// Nothing is saved but the input's shape: the backward is a fixed linear map.
struct AvgPool2x2Backward : public torch::autograd::Node {
  std::vector<int64_t> input_size;

  std::string name() const override { return "BnlabAvgPool2x2Backward"; }

  torch::autograd::variable_list apply(torch::autograd::variable_list&& grads) override {
    const Tensor& g = grads[0];
    if (!g.defined() || !task_should_compute_output(0)) return {Tensor()};
    if (at::GradMode::is_enabled() || !g.has_storage()) {
      // Differentiable (double backward) or batched gradients (is_grads_batched): torch's
      // own op, which only reads the input's shape.
      Tensor like = at::empty(input_size, g.options());
      return {at::avg_pool2d_backward(g, like, {2, 2}, {2, 2}, {0, 0}, false, true,
                                      c10::nullopt)};
    }
    return {backward(g, input_size)};
  }
};

Tensor avg_pool2x2(const Tensor& x) {
  Tensor y;
  {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    y = forward(x);
  }
  if (!torch::autograd::compute_requires_grad(x)) return y;
  auto node = bnlab::make_node<AvgPool2x2Backward>();
  node->set_next_edges(torch::autograd::collect_next_edges(x));
  node->input_size = x.sizes().vec();
  torch::autograd::set_history(y, node);
  return y;
}

}  // namespace

TORCH_LIBRARY(bnlab_pool, m) {
  m.def("avg_pool2x2(Tensor input) -> Tensor");
  m.def("forward(Tensor input) -> Tensor");
  m.def("backward(Tensor grad_out, int[] input_size) -> Tensor");
}

TORCH_LIBRARY_IMPL(bnlab_pool, Autograd, m) {
  m.impl("avg_pool2x2", &avg_pool2x2);
}

TORCH_LIBRARY_IMPL(bnlab_pool, CPU, m) {
  m.impl("forward", &forward);
  m.impl("backward", &backward);
  m.impl("avg_pool2x2", &avg_pool2x2);  // inference tensors (no autograd key) land here
}
