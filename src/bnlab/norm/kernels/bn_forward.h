// bnlab kernels: forward passes (statistics, running statistics, affine + activation).
// Part of cpu_kernels.cpp's single translation unit (included there, inside its anonymous
// namespace); split out only to keep each file readable.
#pragma once

// Rows layout: every channel's sums of (x - shift[c]) and its square.
template <typename T>
void rows_shifted_sums(const T* x, const Layout& lay, std::vector<double>& s1,
                       std::vector<double>& s2, const std::vector<double>& shift) {
  const int64_t M = lay.n, C = lay.c;
  const double* k = shift.data();
  std::vector<double> both;
  rows_reduce(M, C, both, [&](int64_t r0, int64_t r1, int64_t c0, int64_t width,
                              double* a, double* b) {
    const double* kc = k + c0;
    if (width == kLanes) {  // the common case: a fixed trip count, vectorized fully
      for (int64_t r = r0; r < r1; ++r) {
        const T* p = x + r * C + c0;
#pragma omp simd
        for (int64_t j = 0; j < kLanes; ++j) {
          const double d = static_cast<double>(p[j]) - kc[j];
          a[j] += d;
          b[j] += d * d;
        }
      }
      return;
    }
    for (int64_t r = r0; r < r1; ++r) {
      const T* p = x + r * C + c0;
      for (int64_t j = 0; j < width; ++j) {
        const double d = static_cast<double>(p[j]) - kc[j];
        a[j] += d;
        b[j] += d * d;
      }
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
  const int64_t W = lay.pool_w, out_l = W ? L / 4 : L;
  auto planes = [&](int64_t j0, int64_t j1) {  // planes j = n * C + c
    std::vector<T> scratch(pool_scratch(lay));
    for (int64_t j = j0; j < j1; ++j) {
      const int64_t c = j % C;
      apply_plane<ACT>(x + j * L, y + j * out_l, L, W, mean[c], scale[c], shift[c],
                       scratch.data());
    }
  };
  if (split_by_samples(lay, sizeof(T))) {  // the blocks of samples the statistics pass took
    planar_samples_for(lay, [&](int64_t n0, int64_t n1) { planes(n0 * C, n1 * C); });
  } else {
    at::parallel_for(0, N * C, std::max<int64_t>(1, kGrain / std::max<int64_t>(1, L)), planes);
  }
}

// (invstd * weight, bias) per channel: the affine transform's scale and shift, computed
// here rather than with ATen ops (two dispatches cost more than a small layer's kernel).
template <typename T>
std::pair<std::vector<T>, std::vector<T>> scale_shift(const Tensor& invstd,
                                                      const c10::optional<Tensor>& weight,
                                                      const c10::optional<Tensor>& bias) {
  const int64_t C = invstd.numel();
  const Tensor is_c = invstd.contiguous();
  const Tensor w = weight.has_value() && weight->defined() ? weight->contiguous() : Tensor();
  const Tensor b = bias.has_value() && bias->defined() ? bias->contiguous() : Tensor();
  const T* is = is_c.data_ptr<T>();
  const T* wp = w.defined() ? w.data_ptr<T>() : nullptr;
  const T* bp = b.defined() ? b.data_ptr<T>() : nullptr;
  std::vector<T> scale(C), shift(C);
  for (int64_t c = 0; c < C; ++c) {
    scale[c] = wp ? is[c] * wp[c] : is[c];
    shift[c] = bp ? bp[c] : T(0);
  }
  return {std::move(scale), std::move(shift)};
}

template <typename T>
Tensor apply_stats(const Tensor& x, const Layout& lay, const Tensor& mean, const Tensor& invstd,
                   const c10::optional<Tensor>& weight, const c10::optional<Tensor>& bias,
                   int64_t act) {
  auto [scale, shift] = scale_shift<T>(invstd, weight, bias);
  Tensor y = new_output(x, lay);
  const T* xp = x.data_ptr<T>();
  const T *m = mean.data_ptr<T>(), *sc = scale.data(), *sh = shift.data();
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

void check_forward_args(const Tensor& input, const c10::optional<Tensor>& weight,
                        const c10::optional<Tensor>& bias,
                        const c10::optional<Tensor>& running_mean,
                        const c10::optional<Tensor>& running_var, int64_t activation,
                        bool training) {
  check_activation(activation);
  check_input(input, training);
  check_channel_tensor(input, weight, "weight");
  check_channel_tensor(input, bias, "bias");
  check_channel_tensor(input, running_mean, "running_mean");
  check_channel_tensor(input, running_var, "running_var");
}

std::tuple<Tensor, Tensor, Tensor> forward_train(
    const Tensor& input, const c10::optional<Tensor>& weight, const c10::optional<Tensor>& bias,
    const c10::optional<Tensor>& running_mean, const c10::optional<Tensor>& running_var,
    double momentum, double eps, int64_t activation, int64_t pool) {
  check_forward_args(input, weight, bias, running_mean, running_var, activation, true);
  auto [x, lay] = canonical_pooled(input, pool);
  const int64_t C = lay.c;
  const double count = static_cast<double>(lay.n) * lay.l;
  Tensor mean = at::empty({C}, x.options());
  Tensor invstd = at::empty({C}, x.options());
  Tensor y;
  if (!lay.rows && !split_by_samples(lay, x.element_size())) {
    y = new_output(x, lay);
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
    const scalar_t* xp = x.data_ptr<scalar_t>();
    std::vector<double> s1(C), s2(C), k(C);
    for (int64_t c = 0; c < C; ++c) k[c] = static_cast<double>(xp[lay.rows ? c : c * lay.l]);
    auto sums = [&] {  // shifted by each channel's first value
      if (lay.rows) {
        rows_shifted_sums<scalar_t>(xp, lay, s1, s2, k);
      } else {
        planar_shifted_sums<scalar_t>(xp, lay, s1, s2, k);
      }
    };
    sums();
    bool again = false;  // (see shift_too_far)
    for (int64_t c = 0; c < C; ++c) {
      const double d = s1[c] / count;
      if (shift_too_far(d, (s2[c] - s1[c] * d) / count)) {
        k[c] += d;
        again = true;
      }
    }
    if (again) sums();
    scalar_t* m = mean.data_ptr<scalar_t>();
    scalar_t* is = invstd.data_ptr<scalar_t>();
    std::vector<double> var(C);
    double* v = var.data();
    const double *a = s1.data(), *b = s2.data(), *kc = k.data();
    // Vectorized (sqrt included: the library is built with -fno-math-errno); one channel at a
    // time these divisions and square roots were a third of a small layer's kernel time.
    // (_Pragma: a #pragma line cannot sit inside the dispatch macro's argument.)
    _Pragma("omp simd")
    for (int64_t c = 0; c < C; ++c) {
      const double d = a[c] / count;
      const double var = (b[c] - a[c] * d) / count;
      v[c] = var < 0.0 ? 0.0 : var;  // not std::max: a NaN must stay NaN, as in torch
      m[c] = static_cast<scalar_t>(kc[c] + d);
      is[c] = static_cast<scalar_t>(1.0 / std::sqrt(v[c] + eps));
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
                                        int64_t activation, int64_t pool) {
  check_forward_args(input, weight, bias, running_mean, running_var, activation, false);
  auto [x, lay] = canonical_pooled(input, pool);
  const int64_t C = lay.c;
  Tensor invstd = at::empty({C}, x.options());
  Tensor y;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "bnlab_forward_eval", [&] {
    // As (running_var + eps).rsqrt() computes it (in scalar_t), without two ATen calls.
    const scalar_t* rv = running_var.data_ptr<scalar_t>();
    scalar_t* is = invstd.data_ptr<scalar_t>();
    const scalar_t e = static_cast<scalar_t>(eps);
    for (int64_t c = 0; c < C; ++c) is[c] = scalar_t(1) / std::sqrt(rv[c] + e);
    y = apply_stats<scalar_t>(x, lay, running_mean, invstd, weight, bias, activation);
  });
  return {y, invstd};
}
