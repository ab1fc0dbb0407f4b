// Convolution for LeNet-sized layers (stride 1, no padding, groups 1) on contiguous NCHW
// CPU tensors: unfold a block of samples into columns and multiply with BLAS.
//
// Registered as torch.ops.bnlab_conv.conv2d (with its autograd, in C++) and the raw
// kernels torch.ops.bnlab_conv.{forward, backward}. Why not torch's convolution: for few
// channels oneDNN pads them to blocks of 16 and reorders every tensor into and out of its
// blocked layout on each call, which here costs several times the arithmetic. Here a block
// of B samples is unfolded into K = C*kH*kW rows of B*P columns (P = Ho*Wo pixels; B*P
// about 1024, so the block stays in cache), one GEMM per block does the work, and blocks
// are split between threads. The GEMM is the BLAS torch links (sgemm_/dgemm_); where torch
// exports none the library does not load and torch's convolution is used instead.
// Nothing is saved for backward but the input and the weight; columns are recomputed.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/autograd/saved_variable.h>
#include <torch/csrc/autograd/variable.h>
#include <torch/library.h>

#include "autograd_node.h"

#include <algorithm>
#include <mutex>
#include <vector>

extern "C" {
void sgemm_(const char* ta, const char* tb, const int* m, const int* n, const int* k,
            const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
            const float* beta, float* c, const int* ldc);
void dgemm_(const char* ta, const char* tb, const int* m, const int* n, const int* k,
            const double* alpha, const double* a, const int* lda, const double* b,
            const int* ldb, const double* beta, double* c, const int* ldc);
}

namespace {

using at::Tensor;

// Row-major C (m x n) = op(A) (m x k) @ op(B) (k x n) + beta * C, through column-major
// BLAS as C^T = op(B)^T @ op(A)^T.
template <typename T>
void gemm(bool ta, bool tb, int m, int n, int k, const T* a, int lda, const T* b, int ldb,
          T beta, T* c, int ldc) {
  const char ca = ta ? 'T' : 'N', cb = tb ? 'T' : 'N';
  const T one = 1;
  if constexpr (std::is_same_v<T, float>) {
    sgemm_(&cb, &ca, &n, &m, &k, &one, b, &ldb, a, &lda, &beta, c, &ldc);
  } else {
    dgemm_(&cb, &ca, &n, &m, &k, &one, b, &ldb, a, &lda, &beta, c, &ldc);
  }
}

struct Shape {
  int64_t n, c, h, w, o, kh, kw, ho, wo;
  int64_t k() const { return c * kh * kw; }  // rows of the columns: one per (channel, tap)
  int64_t p() const { return ho * wo; }      // output pixels per sample
  int64_t in_size() const { return c * h * w; }
  int64_t block() const { return std::max<int64_t>(1, 1024 / p()); }  // samples per GEMM
};

// cols (K, B*P) for samples [n0, n0 + b): cols[(ci, i, j)][s*P + (y, x)] = x[n0+s][ci][y+i][x+j]
template <typename T>
void unfold(const T* x, T* cols, const Shape& s, int64_t b) {
  const int64_t ld = b * s.p();
  for (int64_t ci = 0; ci < s.c; ++ci)
    for (int64_t i = 0; i < s.kh; ++i)
      for (int64_t j = 0; j < s.kw; ++j) {
        T* row = cols + ((ci * s.kh + i) * s.kw + j) * ld;
        for (int64_t smp = 0; smp < b; ++smp) {
          const T* src = x + smp * s.in_size() + ci * s.h * s.w + i * s.w + j;
          T* dst = row + smp * s.p();
          for (int64_t y = 0; y < s.ho; ++y)
            for (int64_t xx = 0; xx < s.wo; ++xx) dst[y * s.wo + xx] = src[y * s.w + xx];
        }
      }
}

// The adjoint of unfold: dx[n0+s][ci][y+i][x+j] += dcols[(ci, i, j)][s*P + (y, x)]; dx of
// the block is zeroed first.
template <typename T>
void fold(const T* dcols, T* dx, const Shape& s, int64_t b) {
  const int64_t ld = b * s.p();
  std::fill(dx, dx + b * s.in_size(), T(0));
  for (int64_t ci = 0; ci < s.c; ++ci)
    for (int64_t i = 0; i < s.kh; ++i)
      for (int64_t j = 0; j < s.kw; ++j) {
        const T* row = dcols + ((ci * s.kh + i) * s.kw + j) * ld;
        for (int64_t smp = 0; smp < b; ++smp) {
          T* dst = dx + smp * s.in_size() + ci * s.h * s.w + i * s.w + j;
          const T* src = row + smp * s.p();
          for (int64_t y = 0; y < s.ho; ++y)
            for (int64_t xx = 0; xx < s.wo; ++xx) dst[y * s.w + xx] += src[y * s.wo + xx];
        }
      }
}

// (b, O, P) slices of an NCHW tensor <-> (O, b*P) block rows.
template <typename T>
void gather_rows(const T* nchw, T* rows, int64_t o, int64_t p, int64_t b) {
  for (int64_t ch = 0; ch < o; ++ch)
    for (int64_t smp = 0; smp < b; ++smp)
      std::copy_n(nchw + (smp * o + ch) * p, p, rows + (ch * b + smp) * p);
}

template <typename T>
void scatter_rows(const T* rows, T* nchw, int64_t o, int64_t p, int64_t b, const T* bias) {
  for (int64_t smp = 0; smp < b; ++smp)
    for (int64_t ch = 0; ch < o; ++ch) {
      const T* src = rows + (ch * b + smp) * p;
      T* dst = nchw + (smp * o + ch) * p;
      const T add = bias ? bias[ch] : T(0);
      for (int64_t q = 0; q < p; ++q) dst[q] = src[q] + add;
    }
}

Shape check(const Tensor& x, const Tensor& weight) {
  TORCH_CHECK(x.device().is_cpu() && weight.device().is_cpu(),
              "bnlab_conv: input and weight must be CPU tensors");
  TORCH_CHECK(x.dim() == 4 && weight.dim() == 4, "bnlab_conv: input (N, C, H, W) and weight "
              "(O, C, kH, kW) must be 4-D, got ", x.dim(), "-D and ", weight.dim(), "-D");
  TORCH_CHECK(x.scalar_type() == weight.scalar_type() &&
                  (x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble),
              "bnlab_conv: input and weight must both be float32 or both float64");
  Shape s{x.size(0), x.size(1), x.size(2), x.size(3), weight.size(0), weight.size(2),
          weight.size(3), 0, 0};
  TORCH_CHECK(weight.size(1) == s.c, "bnlab_conv: weight expects ", weight.size(1),
              " input channels, input has ", s.c);
  TORCH_CHECK(s.h >= s.kh && s.w >= s.kw, "bnlab_conv: input ", s.h, "x", s.w,
              " is smaller than the kernel ", s.kh, "x", s.kw);
  s.ho = s.h - s.kh + 1;
  s.wo = s.w - s.kw + 1;
  return s;
}

int64_t num_blocks(const Shape& s) { return (s.n + s.block() - 1) / s.block(); }

Tensor forward(const Tensor& input, const Tensor& weight_in, const c10::optional<Tensor>& bias) {
  const Shape s = check(input, weight_in);
  const Tensor x = input.contiguous(), weight = weight_in.contiguous();
  Tensor y = at::empty({s.n, s.o, s.ho, s.wo}, x.options());
  const bool has_bias = bias.has_value() && bias->defined();
  const Tensor b = has_bias ? bias->contiguous() : Tensor();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "bnlab_conv_forward", [&] {
    const scalar_t* bp = has_bias ? b.const_data_ptr<scalar_t>() : nullptr;
    const int K = s.k(), O = s.o;
    at::parallel_for(0, num_blocks(s), 1, [&](int64_t b0, int64_t b1) {
      std::vector<scalar_t> cols(static_cast<size_t>(K) * s.block() * s.p());
      std::vector<scalar_t> out(static_cast<size_t>(O) * s.block() * s.p());
      for (int64_t blk = b0; blk < b1; ++blk) {
        const int64_t n0 = blk * s.block(), nb = std::min(s.block(), s.n - n0);
        const int BP = nb * s.p();
        unfold(x.const_data_ptr<scalar_t>() + n0 * s.in_size(), cols.data(), s, nb);
        gemm<scalar_t>(false, false, O, BP, K, weight.const_data_ptr<scalar_t>(), K,
                       cols.data(), BP, 0, out.data(), BP);
        scatter_rows(out.data(), y.mutable_data_ptr<scalar_t>() + n0 * O * s.p(), O, s.p(),
                     nb, bp);
      }
    });
  });
  return y;
}

std::tuple<Tensor, Tensor, Tensor> backward(const Tensor& grad_out, const Tensor& input,
                                            const Tensor& weight_in, bool need_dx,
                                            bool need_dw, bool need_db) {
  const Shape s = check(input, weight_in);
  TORCH_CHECK(grad_out.sizes() == c10::IntArrayRef({s.n, s.o, s.ho, s.wo}),
              "bnlab_conv: grad_out has shape ", grad_out.sizes(), ", expected ",
              c10::IntArrayRef({s.n, s.o, s.ho, s.wo}));
  const Tensor g = grad_out.contiguous(), x = input.contiguous(), weight = weight_in.contiguous();
  Tensor dx = need_dx ? at::empty_like(x) : Tensor();
  Tensor dw = need_dw ? at::zeros_like(weight) : Tensor();
  Tensor db = need_db ? at::zeros({s.o}, x.options()) : Tensor();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "bnlab_conv_backward", [&] {
    const int K = s.k(), O = s.o;
    // One partial weight and bias gradient per thread, summed at the end.
    const int threads = at::get_num_threads();
    std::vector<scalar_t> dw_part(need_dw ? static_cast<size_t>(threads) * O * K : 0, 0);
    std::vector<scalar_t> db_part(need_db ? static_cast<size_t>(threads) * O : 0, 0);
    at::parallel_for(0, num_blocks(s), 1, [&](int64_t b0, int64_t b1) {
      const int t = at::get_thread_num();
      std::vector<scalar_t> cols(static_cast<size_t>(K) * s.block() * s.p());
      std::vector<scalar_t> rows(static_cast<size_t>(O) * s.block() * s.p());
      std::vector<scalar_t> ones(need_db ? s.block() * s.p() : 0, scalar_t(1));
      for (int64_t blk = b0; blk < b1; ++blk) {
        const int64_t n0 = blk * s.block(), nb = std::min(s.block(), s.n - n0);
        const int BP = nb * s.p();
        gather_rows(g.const_data_ptr<scalar_t>() + n0 * O * s.p(), rows.data(), O, s.p(), nb);
        if (need_db) {  // db (O) += rows (O, BP) @ ones (BP)
          gemm<scalar_t>(false, false, O, 1, BP, rows.data(), BP, ones.data(), 1, 1,
                         db_part.data() + static_cast<size_t>(t) * O, 1);
        }
        if (need_dw) {  // dW (O, K) += rows (O, BP) @ cols^T (BP, K)
          unfold(x.const_data_ptr<scalar_t>() + n0 * s.in_size(), cols.data(), s, nb);
          gemm<scalar_t>(false, true, O, K, BP, rows.data(), BP, cols.data(), BP, 1,
                         dw_part.data() + static_cast<size_t>(t) * O * K, K);
        }
        if (need_dx) {  // dcols (K, BP) = W^T (K, O) @ rows (O, BP), folded back
          gemm<scalar_t>(true, false, K, BP, O, weight.const_data_ptr<scalar_t>(), K,
                         rows.data(), BP, 0, cols.data(), BP);
          fold(cols.data(), dx.mutable_data_ptr<scalar_t>() + n0 * s.in_size(), s, nb);
        }
      }
    });
    for (int t = 0; t < threads; ++t) {
      if (need_dw) {
        scalar_t* d = dw.mutable_data_ptr<scalar_t>();
        const scalar_t* part = dw_part.data() + static_cast<size_t>(t) * O * K;
        for (int64_t i = 0; i < static_cast<int64_t>(O) * K; ++i) d[i] += part[i];
      }
      if (need_db) {
        scalar_t* d = db.mutable_data_ptr<scalar_t>();
        for (int o = 0; o < O; ++o) d[o] += db_part[static_cast<size_t>(t) * O + o];
      }
    }
  });
  return {dx, dw, db};
}

struct Conv2dBackward : public torch::autograd::Node {
  torch::autograd::SavedVariable x, weight;
  bool has_bias = false;

  std::string name() const override { return "BnlabConv2dBackward"; }

  void release_variables() override {  // (Node's mutex_: see apply)
    std::lock_guard<std::mutex> lock(mutex_);
    x.reset_data();
    weight.reset_data();
  }

  torch::autograd::variable_list apply(torch::autograd::variable_list&& grads) override {
    const Tensor& dy = grads[0];
    const size_t n_out = 2 + has_bias;
    if (!dy.defined()) return torch::autograd::variable_list(n_out);
    Tensor xv, w;
    {
      // Another thread's backward through this node may release the saved inputs meanwhile.
      std::lock_guard<std::mutex> lock(mutex_);
      xv = x.unpack();
      w = weight.unpack();
    }
    const bool need_dx = task_should_compute_output(0), need_dw = task_should_compute_output(1);
    const bool need_db = has_bias && task_should_compute_output(2);
    Tensor dx, dw, db;
    if (at::GradMode::is_enabled() || !dy.has_storage()) {
      // Differentiable (double backward) or batched gradients (is_grads_batched): the same
      // gradients as ATen convolutions, with ATen's batching rules.
      if (need_dx) dx = at::conv_transpose2d(dy, w);
      if (need_dw) dw = at::conv2d(xv.transpose(0, 1), dy.transpose(0, 1)).transpose(0, 1);
      if (need_db) db = dy.sum({0, 2, 3});
    } else {
      std::tie(dx, dw, db) = backward(dy, xv, w, need_dx, need_dw, need_db);
    }
    torch::autograd::variable_list out{dx, dw};
    if (has_bias) out.push_back(db);
    return out;
  }
};

Tensor conv2d(const Tensor& x, const Tensor& weight, const c10::optional<Tensor>& bias) {
  Tensor y;
  {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    y = forward(x, weight, bias);
  }
  const bool has_bias = bias.has_value() && bias->defined();
  torch::autograd::variable_list inputs{x, weight};
  if (has_bias) inputs.push_back(*bias);
  if (!torch::autograd::compute_requires_grad(inputs)) return y;
  auto node = bnlab::make_node<Conv2dBackward>();
  node->set_next_edges(torch::autograd::collect_next_edges(inputs));
  node->x = torch::autograd::SavedVariable(x, false);
  node->weight = torch::autograd::SavedVariable(weight, false);
  node->has_bias = has_bias;
  torch::autograd::set_history(y, node);
  return y;
}

}  // namespace

TORCH_LIBRARY(bnlab_conv, m) {
  m.def("conv2d(Tensor input, Tensor weight, Tensor? bias) -> Tensor");
  m.def("forward(Tensor input, Tensor weight, Tensor? bias) -> Tensor");
  m.def("backward(Tensor grad_out, Tensor input, Tensor weight, bool need_dx, bool need_dw, "
        "bool need_db) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(bnlab_conv, Autograd, m) {
  m.impl("conv2d", &conv2d);
}

TORCH_LIBRARY_IMPL(bnlab_conv, CPU, m) {
  m.impl("forward", &forward);
  m.impl("backward", &backward);
  m.impl("conv2d", &conv2d);  // inference tensors (no autograd key) land here
}
