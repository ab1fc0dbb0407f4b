// bnlab's fused CPU batch-norm kernels, written from scratch (no call to torch's batch norm).
//
// Registered as torch.ops.bnlab.batch_norm (with its autograd: the closed-form backward, in
// C++, so no Python runs in backward) and the raw kernels torch.ops.bnlab.{forward_train,
// forward_eval, backward, backward_act}. Two memory layouts:
//   planar: x contiguous as (N, C, L): every (n, c) row of L values is contiguous; threads
//           take whole channels, and each channel's two passes run back to back (the second
//           finds the channel in cache);
//   rows:   x as (M, C) rows of C values: 2-D input, and channels_last input (N, *, C);
//           threads take row blocks with per-thread partial sums.
// An activation (ReLU or sigmoid) may follow the affine transform in the same pass; its
// backward recomputes it from the saved input instead of saving the output (as in-place
// activated batch norm does), so a fused layer keeps one activation-sized tensor, not two.
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
#include <bit>
#include <cmath>
#include <cstdint>
#include <tuple>
#include <vector>

namespace {

using at::Tensor;

constexpr int64_t kGrain = 1 << 15;  // elements of work below which one thread is faster

// Fused activations: the op's ``activation`` argument.
constexpr int64_t kActNone = 0, kActRelu = 1, kActSigmoid = 2;

// expf without branches or calls, so loops over it vectorize: Cephes' range reduction by
// ln 2 and degree-6 polynomial (within 2 ulp of expf on the clamped range).
inline float exp_vec(float x) {
  x = std::min(std::max(x, -87.0f), 88.0f);
  const float magic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const float n = (x * 1.44269504088896341f + magic) - magic;
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  return p * std::bit_cast<float>((static_cast<int32_t>(n) + 127) << 23);
}

template <typename T>
inline T exp_of(T x) {
  if constexpr (std::is_same_v<T, float>) {
    return exp_vec(x);
  } else {
    return std::exp(x);
  }
}

template <int ACT, typename T>
inline T activate(T z) {
  if constexpr (ACT == kActRelu) {
    return z < T(0) ? T(0) : z;  // NaN passes through, as torch.relu
  } else if constexpr (ACT == kActSigmoid) {
    return T(1) / (T(1) + exp_of(-z));
  } else {
    return z;
  }
}

// d activate / dz, from z
template <int ACT, typename T>
inline T activate_slope(T z) {
  if constexpr (ACT == kActRelu) {
    return z > T(0) ? T(1) : T(0);
  } else {
    const T s = T(1) / (T(1) + exp_of(-z));
    return s * (T(1) - s);
  }
}

void check_activation(int64_t act) {
  TORCH_CHECK(act == kActNone || act == kActRelu || act == kActSigmoid,
              "bnlab: activation must be 0 (none), 1 (relu) or 2 (sigmoid), got ", act);
}

struct Layout {
  bool rows;  // (M, C) rows; else planar (N, C, L)
  int64_t n, c, l;  // planar: N, C, L; rows: M, C, 1
};

bool is_channels_last(const Tensor& x) {
  if (x.dim() == 4) return x.is_contiguous(at::MemoryFormat::ChannelsLast);
  if (x.dim() == 5) return x.is_contiguous(at::MemoryFormat::ChannelsLast3d);
  return false;
}

// x in a layout the kernels read directly (a contiguous copy only for odd strides).
std::pair<Tensor, Layout> canonical(const Tensor& x) {
  const int64_t n = x.size(0), c = x.size(1);
  const int64_t l = c == 0 || n == 0 ? 0 : x.numel() / (n * c);
  if (x.dim() > 2 && !x.is_contiguous() && is_channels_last(x)) {
    return {x, Layout{true, n * l, c, 1}};
  }
  Tensor xc = x.contiguous();
  if (l == 1) return {xc, Layout{true, n, c, 1}};
  return {xc, Layout{false, n, c, l}};
}

// t (shaped like x) in x's memory layout, so both are walked with the same offsets.
Tensor like_layout(const Tensor& t, const Tensor& x, const Layout& lay) {
  if (lay.rows && x.dim() > 2 && !x.is_contiguous()) {
    return t.contiguous(x.dim() == 4 ? at::MemoryFormat::ChannelsLast
                                     : at::MemoryFormat::ChannelsLast3d);
  }
  return t.contiguous();
}

// Rows layout: per-thread partial sums over row blocks, vectorized across channels.
template <typename F>
void rows_reduce(int64_t M, int64_t C, int nacc, std::vector<double>& out, F&& row_fn) {
  const int threads = at::get_num_threads();
  std::vector<double> partial(static_cast<size_t>(threads) * nacc * C, 0.0);
  std::vector<char> used(threads, 0);
  at::parallel_for(0, M, std::max<int64_t>(1, kGrain / std::max<int64_t>(1, C)),
                   [&](int64_t r0, int64_t r1) {
    const int t = at::get_thread_num();
    used[t] = 1;
    double* acc = partial.data() + static_cast<size_t>(t) * nacc * C;
    for (int64_t r = r0; r < r1; ++r) row_fn(r, acc);
  });
  out.assign(static_cast<size_t>(nacc) * C, 0.0);
  for (int t = 0; t < threads; ++t) {
    if (!used[t]) continue;
    const double* acc = partial.data() + static_cast<size_t>(t) * nacc * C;
    for (int64_t j = 0; j < nacc * C; ++j) out[j] += acc[j];
  }
}

template <typename T>
void rows_shifted_sums(const T* x, const Layout& lay, std::vector<double>& s1,
                       std::vector<double>& s2, std::vector<double>& shift) {
  const int64_t M = lay.n, C = lay.c;
  shift.assign(C, 0.0);
  for (int64_t c = 0; c < C; ++c) shift[c] = static_cast<double>(x[c]);
  const double* k = shift.data();
  std::vector<double> both;
  rows_reduce(M, C, 2, both, [&](int64_t r, double* acc) {
    const T* p = x + r * C;
    double* a = acc;
    double* b = acc + C;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) {
      const double d = static_cast<double>(p[c]) - k[c];
      a[c] += d;
      b[c] += d * d;
    }
  });
  s1.assign(both.begin(), both.begin() + C);
  s2.assign(both.begin() + C, both.end());
}

// y = act((x - mean[c]) * scale[c] + shift[c])
template <int ACT, typename T>
void affine_apply(const T* x, T* y, const Layout& lay, const T* mean, const T* scale,
                  const T* shift) {
  const int64_t N = lay.n, C = lay.c, L = lay.l;
  if (lay.rows) {
    at::parallel_for(0, N, std::max<int64_t>(1, kGrain / std::max<int64_t>(1, C)),
                     [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const T* p = x + r * C;
        T* q = y + r * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) {
          q[c] = activate<ACT>((p[c] - mean[c]) * scale[c] + shift[c]);
        }
      }
    });
    return;
  }
  at::parallel_for(0, N * C, std::max<int64_t>(1, kGrain / std::max<int64_t>(1, L)),
                   [&](int64_t j0, int64_t j1) {
    for (int64_t j = j0; j < j1; ++j) {
      const int64_t c = j % C;
      const T m = mean[c], s = scale[c], b = shift[c];
      const T* p = x + j * L;
      T* q = y + j * L;
#pragma omp simd
      for (int64_t i = 0; i < L; ++i) q[i] = activate<ACT>((p[i] - m) * s + b);
    }
  });
}

// (invstd * weight, bias) per channel: the affine transform's scale and shift.
std::pair<Tensor, Tensor> scale_shift(const Tensor& invstd, const c10::optional<Tensor>& weight,
                                      const c10::optional<Tensor>& bias) {
  Tensor scale = weight.has_value() && weight->defined() ? invstd * *weight : invstd;
  Tensor shift = bias.has_value() && bias->defined() ? bias->contiguous()
                                                       : at::zeros_like(invstd);
  return {scale.contiguous(), shift};
}

template <typename T>
Tensor apply_stats(const Tensor& x, const Layout& lay, const Tensor& mean, const Tensor& invstd,
                   const c10::optional<Tensor>& weight, const c10::optional<Tensor>& bias,
                   int64_t act) {
  auto [scale, shift] = scale_shift(invstd, weight, bias);
  Tensor y = at::empty_like(x);
  const T* xp = x.data_ptr<T>();
  const T *m = mean.data_ptr<T>(), *sc = scale.data_ptr<T>(), *sh = shift.data_ptr<T>();
  T* yp = y.data_ptr<T>();
  if (act == kActRelu) {
    affine_apply<kActRelu, T>(xp, yp, lay, m, sc, sh);
  } else if (act == kActSigmoid) {
    affine_apply<kActSigmoid, T>(xp, yp, lay, m, sc, sh);
  } else {
    affine_apply<kActNone, T>(xp, yp, lay, m, sc, sh);
  }
  return y;
}

// Planar layout, training: each channel's statistics, running-statistic update and output
// in turn, so the second pass over a channel (N * L values) reads it from this core's L2
// cache instead of from memory shared with everything else.
template <int ACT, typename T>
void planar_forward_train(const T* x, T* y, const Layout& lay, const T* w, const T* b,
                          T* mean, T* invstd, T* rm, T* rv, double momentum, double eps) {
  const int64_t N = lay.n, C = lay.c, L = lay.l;
  const double count = static_cast<double>(N) * L;
  at::parallel_for(0, C, std::max<int64_t>(1, kGrain / std::max<int64_t>(1, N * L)),
                   [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const double k = static_cast<double>(x[c * L]);
      double a = 0.0, bb = 0.0;
      for (int64_t n = 0; n < N; ++n) {
        const T* p = x + (n * C + c) * L;
#pragma omp simd reduction(+ : a, bb)
        for (int64_t i = 0; i < L; ++i) {
          const double d = static_cast<double>(p[i]) - k;
          a += d;
          bb += d * d;
        }
      }
      const double d = a / count;
      const double var = std::max(0.0, (bb - a * d) / count);
      const T m = static_cast<T>(k + d);
      const T is = static_cast<T>(1.0 / std::sqrt(var + eps));
      mean[c] = m;
      invstd[c] = is;
      if (rm) rm[c] = static_cast<T>((1.0 - momentum) * rm[c] + momentum * (k + d));
      if (rv) {
        rv[c] = static_cast<T>((1.0 - momentum) * rv[c] + momentum * var * count / (count - 1.0));
      }
      const T sc = w ? is * w[c] : is, sh = b ? b[c] : T(0);
      for (int64_t n = 0; n < N; ++n) {
        const T* p = x + (n * C + c) * L;
        T* q = y + (n * C + c) * L;
#pragma omp simd
        for (int64_t i = 0; i < L; ++i) q[i] = activate<ACT>((p[i] - m) * sc + sh);
      }
    }
  });
}

std::tuple<Tensor, Tensor, Tensor> forward_train(
    const Tensor& input, const c10::optional<Tensor>& weight, const c10::optional<Tensor>& bias,
    const c10::optional<Tensor>& running_mean, const c10::optional<Tensor>& running_var,
    double momentum, double eps, int64_t activation) {
  check_activation(activation);
  auto [x, lay] = canonical(input);
  const int64_t C = lay.c;
  const double count = static_cast<double>(lay.n) * lay.l;
  Tensor mean = at::empty({C}, x.options());
  Tensor invstd = at::empty({C}, x.options());
  Tensor y;
  if (!lay.rows) {
    Tensor y = at::empty_like(x);
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "bnlab_forward_train", [&] {
      auto ptr = [](const c10::optional<Tensor>& t) {
        return t.has_value() && t->defined() ? t->data_ptr<scalar_t>() : nullptr;
      };
      const scalar_t *w = ptr(weight), *b = ptr(bias);
      scalar_t *rm = ptr(running_mean), *rv = ptr(running_var);
      auto run = [&](auto act) {
        planar_forward_train<decltype(act)::value, scalar_t>(
            x.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), lay, w, b,
            mean.data_ptr<scalar_t>(), invstd.data_ptr<scalar_t>(), rm, rv, momentum, eps);
      };
      if (activation == kActRelu) {
        run(std::integral_constant<int, kActRelu>{});
      } else if (activation == kActSigmoid) {
        run(std::integral_constant<int, kActSigmoid>{});
      } else {
        run(std::integral_constant<int, kActNone>{});
      }
    });
    return {y, mean, invstd};
  }
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "bnlab_forward_train", [&] {
    std::vector<double> s1, s2, k;
    s1.resize(C);
    s2.resize(C);
    k.resize(C);
    rows_shifted_sums<scalar_t>(x.data_ptr<scalar_t>(), lay, s1, s2, k);
    scalar_t* m = mean.data_ptr<scalar_t>();
    scalar_t* is = invstd.data_ptr<scalar_t>();
    std::vector<double> var(C);
    for (int64_t c = 0; c < C; ++c) {
      const double d = s1[c] / count;
      var[c] = std::max(0.0, (s2[c] - s1[c] * d) / count);
      m[c] = static_cast<scalar_t>(k[c] + d);
      is[c] = static_cast<scalar_t>(1.0 / std::sqrt(var[c] + eps));
    }
    if (running_mean.has_value() && running_mean->defined()) {
      scalar_t* rm = running_mean->data_ptr<scalar_t>();
      for (int64_t c = 0; c < C; ++c) {
        rm[c] = static_cast<scalar_t>((1.0 - momentum) * rm[c] + momentum * (k[c] + s1[c] / count));
      }
    }
    if (running_var.has_value() && running_var->defined()) {
      scalar_t* rv = running_var->data_ptr<scalar_t>();
      const double unbias = count / (count - 1.0);
      for (int64_t c = 0; c < C; ++c) {
        rv[c] = static_cast<scalar_t>((1.0 - momentum) * rv[c] + momentum * var[c] * unbias);
      }
    }
    y = apply_stats<scalar_t>(x, lay, mean, invstd, weight, bias, activation);
  });
  return {y, mean, invstd};
}

std::tuple<Tensor, Tensor> forward_eval(const Tensor& input, const Tensor& running_mean,
                                        const Tensor& running_var,
                                        const c10::optional<Tensor>& weight,
                                        const c10::optional<Tensor>& bias, double eps,
                                        int64_t activation) {
  check_activation(activation);
  auto [x, lay] = canonical(input);
  Tensor invstd = (running_var + eps).rsqrt();
  Tensor mean = running_mean.contiguous();
  Tensor y;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "bnlab_forward_eval", [&] {
    y = apply_stats<scalar_t>(x, lay, mean, invstd, weight, bias, activation);
  });
  return {y, invstd};
}

// Rows layout, per channel: sum(dz) and sum(dz * (x - mean)), where dz = dy, or with an
// activation dz = dy * act'(z), z = (x - mean) * scale + shift recomputed from x and written
// to dz_out.
template <int ACT, typename T>
void rows_grad_sums(const T* x, const T* dy, const T* mean, const Layout& lay,
                    std::vector<double>& sdy, std::vector<double>& sdyx, T* dz_out = nullptr,
                    const T* scale = nullptr, const T* shift = nullptr) {
  const int64_t M = lay.n, C = lay.c;
  std::vector<double> both;
  rows_reduce(M, C, 2, both, [&](int64_t r, double* acc) {
    const T* p = x + r * C;
    const T* g = dy + r * C;
    T* o = dz_out + r * C;
    double* a = acc;
    double* b = acc + C;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) {
      T gc = g[c];
      if constexpr (ACT != kActNone) {
        gc *= activate_slope<ACT>((p[c] - mean[c]) * scale[c] + shift[c]);
        o[c] = gc;
      }
      a[c] += static_cast<double>(gc);
      b[c] += static_cast<double>(gc) * (static_cast<double>(p[c]) - mean[c]);
    }
  });
  sdy.assign(both.begin(), both.begin() + C);
  sdyx.assign(both.begin() + C, both.end());
}

// Rows layout: dx = k*dy + (x - mean)*p + q, with per-channel k, p, q.
template <typename T>
void rows_grad_input(const T* x, const T* dy, T* dx, const Layout& lay, const T* mean,
                     const T* k, const T* p, const T* q) {
  const int64_t M = lay.n, C = lay.c;
  at::parallel_for(0, M, std::max<int64_t>(1, kGrain / std::max<int64_t>(1, C)),
                   [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const T* xp = x + r * C;
      const T* g = dy + r * C;
      T* o = dx + r * C;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) o[c] = g[c] * k[c] + (xp[c] - mean[c]) * p[c] + q[c];
    }
  });
}

// Planar layout: per channel in turn, the sums pass (with an activation: forming dz and, when
// dx is wanted, storing it in dx) and then the dx pass, which finds the channel in L2.
template <int ACT, typename T>
void planar_backward(const T* x, const T* dy, T* dx, const Layout& lay, const T* mean,
                     const T* invstd, const T* w, const T* b, bool train,
                     std::vector<double>& sdy, std::vector<double>& sdyx) {
  const int64_t N = lay.n, C = lay.c, L = lay.l;
  const double count = static_cast<double>(N) * L;
  sdy.assign(C, 0.0);
  sdyx.assign(C, 0.0);
  at::parallel_for(0, C, std::max<int64_t>(1, kGrain / std::max<int64_t>(1, N * L)),
                   [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const double md = mean[c];
      const T m = mean[c], is = invstd[c];
      const T sc = w ? is * w[c] : is, sh = b ? b[c] : T(0);
      double a = 0.0, bb = 0.0;
      for (int64_t n = 0; n < N; ++n) {
        const T* p = x + (n * C + c) * L;
        const T* g = dy + (n * C + c) * L;
        T* o = dx ? dx + (n * C + c) * L : nullptr;
#pragma omp simd reduction(+ : a, bb)
        for (int64_t i = 0; i < L; ++i) {
          T gi = g[i];
          if constexpr (ACT != kActNone) {
            gi *= activate_slope<ACT>((p[i] - m) * sc + sh);
            if (o) o[i] = gi;
          }
          a += static_cast<double>(gi);
          bb += static_cast<double>(gi) * (static_cast<double>(p[i]) - md);
        }
      }
      sdy[c] = a;
      sdyx[c] = bb;
      if (!dx) continue;
      const double kd = static_cast<double>(is) * (w ? static_cast<double>(w[c]) : 1.0);
      const double i2 = static_cast<double>(is) * is;
      const T kc = static_cast<T>(kd);
      const T pc = train ? static_cast<T>(-kd * i2 * bb / count) : T(0);
      const T qc = train ? static_cast<T>(-kd * a / count) : T(0);
      for (int64_t n = 0; n < N; ++n) {
        const T* p = x + (n * C + c) * L;
        // with an activation dx holds dz here, overwritten element by element
        const T* g = ACT != kActNone ? dx + (n * C + c) * L : dy + (n * C + c) * L;
        T* o = dx + (n * C + c) * L;
#pragma omp simd
        for (int64_t i = 0; i < L; ++i) o[i] = g[i] * kc + (p[i] - m) * pc + qc;
      }
    }
  });
}

// Gradients of y = act((x - mean) * invstd * weight + bias). ``train``: mean/invstd are the
// batch's own statistics (their dependence on x enters dx); else constants. Undefined outputs
// are returned for grads not asked for. With an activation, its gradient is taken in the
// first pass (the activation recomputed from x) and bias is needed.
std::tuple<Tensor, Tensor, Tensor> backward_act(const Tensor& grad_out, const Tensor& input,
                                                const Tensor& mean, const Tensor& invstd,
                                                const c10::optional<Tensor>& weight,
                                                const c10::optional<Tensor>& bias,
                                                int64_t activation, bool train, bool need_dx,
                                                bool need_dw, bool need_db) {
  check_activation(activation);
  auto [x, lay] = canonical(input);
  Tensor dy = like_layout(grad_out, x, lay);
  const int64_t C = lay.c;
  const double count = static_cast<double>(lay.n) * lay.l;
  Tensor dx, dw, db;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "bnlab_backward", [&] {
    std::vector<double> sdy, sdyx;
    const scalar_t* m = mean.data_ptr<scalar_t>();
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const bool has_w = weight.has_value() && weight->defined();
    const scalar_t* w = has_w ? weight->data_ptr<scalar_t>() : nullptr;
    const scalar_t* is = invstd.data_ptr<scalar_t>();
    if (!lay.rows) {
      if (need_dx) dx = at::empty_like(x);
      scalar_t* dxp = need_dx ? dx.data_ptr<scalar_t>() : nullptr;
      const scalar_t* b =
          bias.has_value() && bias->defined() ? bias->data_ptr<scalar_t>() : nullptr;
      const scalar_t* g = dy.data_ptr<scalar_t>();
      if (activation == kActRelu) {
        planar_backward<kActRelu, scalar_t>(xp, g, dxp, lay, m, is, w, b, train, sdy, sdyx);
      } else if (activation == kActSigmoid) {
        planar_backward<kActSigmoid, scalar_t>(xp, g, dxp, lay, m, is, w, b, train, sdy, sdyx);
      } else {
        planar_backward<kActNone, scalar_t>(xp, g, dxp, lay, m, is, w, b, train, sdy, sdyx);
      }
    } else if (activation != kActNone) {
      // The activation's gradient dz replaces dy from here on; dx then overwrites it.
      auto [scale, shift] = scale_shift(invstd, weight, bias);
      Tensor dz = at::empty_like(x);
      const scalar_t *sc = scale.data_ptr<scalar_t>(), *sh = shift.data_ptr<scalar_t>();
      if (activation == kActRelu) {
        rows_grad_sums<kActRelu, scalar_t>(xp, dy.data_ptr<scalar_t>(), m, lay, sdy, sdyx,
                                           dz.data_ptr<scalar_t>(), sc, sh);
      } else {
        rows_grad_sums<kActSigmoid, scalar_t>(xp, dy.data_ptr<scalar_t>(), m, lay, sdy,
                                              sdyx, dz.data_ptr<scalar_t>(), sc, sh);
      }
      dy = dz;
    } else {
      rows_grad_sums<kActNone, scalar_t>(xp, dy.data_ptr<scalar_t>(), m, lay, sdy, sdyx);
    }
    if (need_dw && has_w) {
      dw = at::empty({C}, weight->options());
      scalar_t* o = dw.data_ptr<scalar_t>();
      for (int64_t c = 0; c < C; ++c) o[c] = static_cast<scalar_t>(sdyx[c] * is[c]);
    }
    if (need_db) {
      db = at::empty({C}, x.options());
      scalar_t* o = db.data_ptr<scalar_t>();
      for (int64_t c = 0; c < C; ++c) o[c] = static_cast<scalar_t>(sdy[c]);
    }
    if (need_dx && lay.rows) {
      Tensor coef = at::empty({3, C}, x.options());
      scalar_t* k = coef.data_ptr<scalar_t>();
      scalar_t* p = k + C;
      scalar_t* q = p + C;
      for (int64_t c = 0; c < C; ++c) {
        const double kc = static_cast<double>(is[c]) * (has_w ? static_cast<double>(w[c]) : 1.0);
        k[c] = static_cast<scalar_t>(kc);
        if (train) {
          const double i2 = static_cast<double>(is[c]) * is[c];
          p[c] = static_cast<scalar_t>(-kc * i2 * sdyx[c] / count);
          q[c] = static_cast<scalar_t>(-kc * sdy[c] / count);
        } else {
          p[c] = 0;
          q[c] = 0;
        }
      }
      dx = activation != kActNone ? dy : at::empty_like(x);  // dy is then our own dz
      rows_grad_input<scalar_t>(x.data_ptr<scalar_t>(), dy.data_ptr<scalar_t>(),
                           dx.data_ptr<scalar_t>(), lay, m, k, p, q);
    }
  });
  return {dx, dw, db};
}

std::tuple<Tensor, Tensor, Tensor> backward_kernel(const Tensor& grad_out, const Tensor& input,
                                                   const Tensor& mean, const Tensor& invstd,
                                                   const c10::optional<Tensor>& weight,
                                                   bool train, bool need_dx, bool need_dw,
                                                   bool need_db) {
  return backward_act(grad_out, input, mean, invstd, weight, c10::nullopt, kActNone, train,
                      need_dx, need_dw, need_db);
}


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
    dz = dy * (z > 0).to(dy.scalar_type());
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

  std::string name() const override { return "BnlabBatchNormBackward"; }

  void release_variables() override {
    x.reset_data();
    weight.reset_data();
    bias.reset_data();
    mean.reset();
    invstd.reset();
  }

  torch::autograd::variable_list apply(torch::autograd::variable_list&& grads) override {
    const Tensor& dy = grads[0];
    const size_t n_out = 1 + has_weight + has_bias;
    if (!dy.defined()) return torch::autograd::variable_list(n_out);
    Tensor xv = x.unpack();
    Tensor w = weight.unpack();
    Tensor b = activation == kActNone ? Tensor() : bias.unpack();
    const bool need_dx = task_should_compute_output(0);
    const bool need_dw = has_weight && task_should_compute_output(1);
    const bool need_db = has_bias && task_should_compute_output(has_weight ? 2 : 1);
    Tensor dx, dw, db;
    if (at::GradMode::is_enabled()) {
      auto g = activation == kActNone
                   ? differentiable_grads(dy, xv, mean, invstd, w, training, eps, need_dx,
                                          need_dw, need_db)
                   : differentiable_grads_act(dy, xv, mean, invstd, w, b, activation, training,
                                              eps, need_dx, need_dw, need_db);
      dx = g[0], dw = g[1], db = g[2];
    } else {
      auto wo = w.defined() ? c10::optional<Tensor>(w) : c10::nullopt;
      auto bo = b.defined() ? c10::optional<Tensor>(b) : c10::nullopt;
      std::tie(dx, dw, db) = backward_act(dy, xv, mean, invstd, wo, bo, activation, training,
                                          need_dx, need_dw, need_db);
    }
    torch::autograd::variable_list out{dx};
    if (has_weight) out.push_back(dw);
    if (has_bias) out.push_back(db);
    return out;
  }
};

// The op with autograd: runs the fused forward and, when a gradient is wanted, records a
// BatchNormBackward node; the running statistics are updated in place (versions bumped).
Tensor batch_norm(const Tensor& x, const c10::optional<Tensor>& weight,
                  const c10::optional<Tensor>& bias, const c10::optional<Tensor>& running_mean,
                  const c10::optional<Tensor>& running_var, bool training, double momentum,
                  double eps, int64_t activation) {
  Tensor y, mean, invstd;
  {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    if (training) {
      std::tie(y, mean, invstd) =
          forward_train(x, weight, bias, running_mean, running_var, momentum, eps, activation);
    } else {
      std::tie(y, invstd) =
          forward_eval(x, *running_mean, *running_var, weight, bias, eps, activation);
      mean = running_mean->clone();  // a later training step updates the buffer in place
    }
  }
  if (training) {
    if (defined(running_mean)) torch::autograd::impl::bump_version(*running_mean);
    if (defined(running_var)) torch::autograd::impl::bump_version(*running_var);
  }
  torch::autograd::variable_list inputs{x};
  if (defined(weight)) inputs.push_back(*weight);
  if (defined(bias)) inputs.push_back(*bias);
  if (!torch::autograd::compute_requires_grad(inputs)) return y;
  auto node = c10::make_intrusive<BatchNormBackward>();
  node->set_next_edges(torch::autograd::collect_next_edges(inputs));
  // Saved: the input and two (C,) statistics, as torch's kernel saves; the rest (with an
  // activation: its input and output too) is recomputed.
  node->x = torch::autograd::SavedVariable(x, false);
  if (defined(weight)) node->weight = torch::autograd::SavedVariable(*weight, false);
  if (activation != kActNone && defined(bias)) {
    node->bias = torch::autograd::SavedVariable(*bias, false);
  }
  node->activation = activation;
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
      "Tensor(b!)? running_var, bool training, float momentum, float eps, int activation=0) "
      "-> Tensor");
  m.def(
      "forward_train(Tensor input, Tensor? weight, Tensor? bias, Tensor(a!)? running_mean, "
      "Tensor(b!)? running_var, float momentum, float eps, int activation=0) "
      "-> (Tensor, Tensor, Tensor)");
  m.def(
      "forward_eval(Tensor input, Tensor running_mean, Tensor running_var, Tensor? weight, "
      "Tensor? bias, float eps, int activation=0) -> (Tensor, Tensor)");
  m.def(
      "backward(Tensor grad_out, Tensor input, Tensor mean, Tensor invstd, Tensor? weight, "
      "bool train, bool need_dx, bool need_dw, bool need_db) -> (Tensor, Tensor, Tensor)");
  m.def(
      "backward_act(Tensor grad_out, Tensor input, Tensor mean, Tensor invstd, Tensor? weight, "
      "Tensor? bias, int activation, bool train, bool need_dx, bool need_dw, bool need_db) "
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
