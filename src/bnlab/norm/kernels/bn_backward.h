// bnlab kernels: backward passes (gradient sums, input gradient; activation recomputed).
// Part of cpu_kernels.cpp's single translation unit (included there, inside its anonymous
// namespace); split out only to keep each file readable.
#pragma once

// Rows layout, per channel: sum(dz) and sum(dz * (x - mean)), where dz = dy, or with an
// activation dz = dy * act'(z), z = (x - mean) * scale + shift recomputed from x and written
// to dz_out.
template <int ACT, typename T, int64_t W>
inline void rows_grad_tile(const T* x, const T* dy, T* dz_out, const T* m, const T* sc,
                           const T* sh, int64_t C, int64_t r0, int64_t r1, int64_t c0,
                           int64_t width, double* a, double* b) {
  const int64_t n = W > 0 ? W : width;  // W: a fixed width the compiler can unroll
  for (int64_t r = r0; r < r1; ++r) {
    const T* p = x + r * C + c0;
    const T* g = dy + r * C + c0;
    T* o = ACT != kActNone ? dz_out + r * C + c0 : nullptr;
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) {
      T gj = g[j];
      if constexpr (ACT != kActNone) {
        gj *= activate_slope<ACT>((p[j] - m[j]) * sc[j] + sh[j]);
        o[j] = gj;
      }
      a[j] += static_cast<double>(gj);
      b[j] += static_cast<double>(gj) * (static_cast<double>(p[j]) - m[j]);
    }
  }
}

template <int ACT, typename T>
void rows_grad_sums(const T* x, const T* dy, const T* mean, const Layout& lay,
                    std::vector<double>& sdy, std::vector<double>& sdyx, T* dz_out = nullptr,
                    const T* scale = nullptr, const T* shift = nullptr) {
  const int64_t M = lay.n, C = lay.c;
  std::vector<double> both;
  rows_reduce(M, C, both, [&](int64_t r0, int64_t r1, int64_t c0, int64_t width,
                              double* a, double* b) {
    const T* sc = ACT != kActNone ? scale + c0 : nullptr;
    const T* sh = ACT != kActNone ? shift + c0 : nullptr;
    if (width == kLanes) {  // the common case: a fixed trip count, vectorized fully
      rows_grad_tile<ACT, T, kLanes>(x, dy, dz_out, mean + c0, sc, sh, C, r0, r1, c0, width,
                                     a, b);
    } else {
      rows_grad_tile<ACT, T, 0>(x, dy, dz_out, mean + c0, sc, sh, C, r0, r1, c0, width, a, b);
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

// Planar layout: the tensors of one backward call and its per-channel work. With pooling
// (lay.pool_w) dy is the pooled output's gradient, spread over each plane as it is needed.
template <typename T>
struct PlanarGrad {
  const T* x;
  const T* dy;
  T* dx;  // null when dx is not wanted; with an activation it holds dz between the passes
  int64_t C, L, W, dy_l;
  const T *mean, *invstd, *w, *b;

  PlanarGrad(const T* x_, const T* dy_, T* dx_, const Layout& lay, const T* mean_,
             const T* invstd_, const T* w_, const T* b_)
      : x(x_), dy(dy_), dx(dx_), C(lay.c), L(lay.l), W(lay.pool_w),
        dy_l(lay.pool_w ? lay.l / 4 : lay.l), mean(mean_), invstd(invstd_), w(w_), b(b_) {}

  // dy of plane (n, c): L values (with pooling, spread into ``spread`` first)
  const T* grad_plane(int64_t n, int64_t c, T* spread) const {
    const T* g = dy + (n * C + c) * dy_l;
    if (!W) return g;
    unpool_plane(g, spread, L, W);
    return spread;
  }

  // Channel c over samples [n0, n1): adds sum(dz) and sum(dz * (x - mean)) to a and b, where
  // dz = dy, or with an activation dy * act'(z) (stored in dx when dx is wanted).
  template <int ACT>
  void sums(int64_t c, int64_t n0, int64_t n1, double& a, double& b_out, T* spread) const {
    const double md = mean[c];
    const T m = mean[c], is = invstd[c];
    const T sc = w ? is * w[c] : is, sh = b ? b[c] : T(0);
    double la[kSpan] = {}, lb[kSpan] = {};  // independent accumulators: see kSpan
    auto term = [&](const T* p, const T* g, T* o, int64_t i, int64_t j) {
      T gi = g[i];
      if constexpr (ACT != kActNone) {
        gi *= activate_slope<ACT>((p[i] - m) * sc + sh);
        if (o) o[i] = gi;
      }
      la[j] += static_cast<double>(gi);
      lb[j] += static_cast<double>(gi) * (static_cast<double>(p[i]) - md);
    };
    for (int64_t n = n0; n < n1; ++n) {
      const T* p = x + (n * C + c) * L;
      const T* g = grad_plane(n, c, spread);
      T* o = dx ? dx + (n * C + c) * L : nullptr;
      int64_t i = 0;
      for (; i + kSpan <= L; i += kSpan) {
        if constexpr (ACT != kActNone) {
          // The activation's slope in T's full vector width, then the sums in double: in one
          // loop the compiler vectorized both at double's width (half as many lanes).
          T local[kSpan];
          T* dz = o ? o + i : local;
#pragma omp simd
          for (int64_t j = 0; j < kSpan; ++j) {
            dz[j] = g[i + j] * activate_slope<ACT>((p[i + j] - m) * sc + sh);
          }
#pragma omp simd
          for (int64_t j = 0; j < kSpan; ++j) {
            la[j] += static_cast<double>(dz[j]);
            lb[j] += static_cast<double>(dz[j]) * (static_cast<double>(p[i + j]) - md);
          }
        } else {
#pragma omp simd
          for (int64_t j = 0; j < kSpan; ++j) term(p, g, o, i + j, j);
        }
      }
      for (int64_t j = 0; i < L; ++i, ++j) term(p, g, o, i, j);
    }
    for (int64_t j = 0; j < kSpan; ++j) {
      a += la[j];
      b_out += lb[j];
    }
  }

  // dx = k*dz + (x - mean)*p + q for channel c: k, p, q from its sums (count: values per
  // channel; without ``train`` the statistics were constants: p = q = 0).
  std::array<T, 3> coefficients(int64_t c, double a, double bb, double count, bool train) const {
    const double is = invstd[c];
    const double kd = is * (w ? static_cast<double>(w[c]) : 1.0);
    if (!train) return {static_cast<T>(kd), T(0), T(0)};
    return {static_cast<T>(kd), static_cast<T>(-kd * is * is * bb / count),
            static_cast<T>(-kd * a / count)};
  }

  // Channel c over samples [n0, n1): the dx pass.
  template <int ACT>
  void input_grad(int64_t c, int64_t n0, int64_t n1, const std::array<T, 3>& kpq,
                  T* spread) const {
    const T m = mean[c], kc = kpq[0], pc = kpq[1], qc = kpq[2];
    for (int64_t n = n0; n < n1; ++n) {
      const T* p = x + (n * C + c) * L;
      // with an activation dx holds dz here, overwritten element by element
      const T* g = ACT != kActNone ? dx + (n * C + c) * L : grad_plane(n, c, spread);
      T* o = dx + (n * C + c) * L;
#pragma omp simd
      for (int64_t i = 0; i < L; ++i) o[i] = g[i] * kc + (p[i] - m) * pc + qc;
    }
  }
};

// Planar layout split by channels: per channel in turn, the sums pass and then the dx pass,
// which finds the channel in this core's L2 cache.
template <int ACT, typename T>
void planar_backward(const PlanarGrad<T>& g, const Layout& lay, bool train,
                     std::vector<double>& sdy, std::vector<double>& sdyx) {
  const int64_t N = lay.n, C = lay.c, L = lay.l;
  const double count = static_cast<double>(N) * L;
  sdy.assign(C, 0.0);
  sdyx.assign(C, 0.0);
  at::parallel_for(0, C, std::max<int64_t>(1, kGrain / std::max<int64_t>(1, N * L)),
                   [&](int64_t c0, int64_t c1) {
    std::vector<T> spread(lay.pool_w ? L : 0);
    for (int64_t c = c0; c < c1; ++c) {
      g.template sums<ACT>(c, 0, N, sdy[c], sdyx[c], spread.data());
      if (g.dx) {
        g.template input_grad<ACT>(c, 0, N, g.coefficients(c, sdy[c], sdyx[c], count, train),
                                   spread.data());
      }
    }
  });
}

// Planar layout split by samples (see planar_samples_for): both passes over each thread's
// own block of samples, the sums added over threads in between.
template <int ACT, typename T>
void planar_backward_by_samples(const PlanarGrad<T>& g, const Layout& lay, bool train,
                                std::vector<double>& sdy, std::vector<double>& sdyx) {
  const int64_t C = lay.c, L = lay.l;
  const double count = static_cast<double>(lay.n) * L;
  std::vector<double> both;
  planar_reduce(lay, both, [&](int64_t c, int64_t n0, int64_t n1, double& a, double& b) {
    std::vector<T> spread(lay.pool_w ? L : 0);
    g.template sums<ACT>(c, n0, n1, a, b, spread.data());
  });
  sdy.assign(both.begin(), both.begin() + C);
  sdyx.assign(both.begin() + C, both.end());
  if (!g.dx) return;
  std::vector<std::array<T, 3>> kpq(C);
  for (int64_t c = 0; c < C; ++c) kpq[c] = g.coefficients(c, sdy[c], sdyx[c], count, train);
  planar_samples_for(lay, [&](int64_t n0, int64_t n1) {
    std::vector<T> spread(lay.pool_w ? L : 0);
    for (int64_t c = 0; c < C; ++c) g.template input_grad<ACT>(c, n0, n1, kpq[c], spread.data());
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
                                                bool need_dw, bool need_db, int64_t pool) {
  check_activation(activation);
  check_input(input, false);
  auto [x, lay] = canonical_pooled(input, pool);
  TORCH_CHECK(grad_out.sizes() == c10::IntArrayRef(output_shape(input, lay)),
              "bnlab: grad_out has shape ", grad_out.sizes(), ", the ",
              pool == 2 ? "pooled output " : "input ", c10::IntArrayRef(output_shape(input, lay)));
  check_channel_tensor(input, mean, "mean");
  check_channel_tensor(input, invstd, "invstd");
  check_channel_tensor(input, weight, "weight");
  check_channel_tensor(input, bias, "bias");
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
      const PlanarGrad<scalar_t> g(xp, dy.data_ptr<scalar_t>(), dxp, lay, m, is, w, b);
      auto run = [&](auto act) {
        constexpr int A = decltype(act)::value;
        if (split_by_samples(lay, sizeof(scalar_t))) {
          planar_backward_by_samples<A, scalar_t>(g, lay, train, sdy, sdyx);
        } else {
          planar_backward<A, scalar_t>(g, lay, train, sdy, sdyx);
        }
      };
      if (activation == kActRelu) {
        run(std::integral_constant<int, kActRelu>{});
      } else if (activation == kActSigmoid) {
        run(std::integral_constant<int, kActSigmoid>{});
      } else {
        run(std::integral_constant<int, kActNone>{});
      }
    } else if (activation != kActNone) {
      // The activation's gradient dz replaces dy from here on; dx then overwrites it.
      auto [scale, shift] = scale_shift<scalar_t>(invstd, weight, bias);
      Tensor dz = at::empty_like(x);
      const scalar_t *sc = scale.data(), *sh = shift.data();
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
      std::vector<scalar_t> coef(3 * C);
      scalar_t* k = coef.data();
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
                      need_dx, need_dw, need_db, 1);
}
