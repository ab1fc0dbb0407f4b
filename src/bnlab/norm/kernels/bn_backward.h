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

// Planar layout: per channel in turn, the sums pass (with an activation: forming dz and, when
// dx is wanted, storing it in dx) and then the dx pass, which finds the channel in L2. With
// pooling (lay.pool_w) dy is the pooled output's gradient, spread over each plane in turn.
template <int ACT, typename T>
void planar_backward(const T* x, const T* dy, T* dx, const Layout& lay, const T* mean,
                     const T* invstd, const T* w, const T* b, bool train,
                     std::vector<double>& sdy, std::vector<double>& sdyx) {
  const int64_t N = lay.n, C = lay.c, L = lay.l, W = lay.pool_w, dy_l = W ? L / 4 : L;
  const double count = static_cast<double>(N) * L;
  sdy.assign(C, 0.0);
  sdyx.assign(C, 0.0);
  at::parallel_for(0, C, std::max<int64_t>(1, kGrain / std::max<int64_t>(1, N * L)),
                   [&](int64_t c0, int64_t c1) {
    std::vector<T> spread(W ? L : 0);
    for (int64_t c = c0; c < c1; ++c) {
      auto grad_plane = [&](int64_t n) -> const T* {  // dy for plane (n, c), L values
        const T* g = dy + (n * C + c) * dy_l;
        if (!W) return g;
        unpool_plane(g, spread.data(), L, W);
        return spread.data();
      };
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
      for (int64_t n = 0; n < N; ++n) {
        const T* p = x + (n * C + c) * L;
        const T* g = grad_plane(n);
        T* o = dx ? dx + (n * C + c) * L : nullptr;
        int64_t i = 0;
        for (; i + kSpan <= L; i += kSpan) {
          if constexpr (ACT != kActNone) {
            // The activation's slope in T's full vector width, then the sums in double: in
            // one loop the compiler vectorized both at double's width (half as many lanes).
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
      double a = 0.0, bb = 0.0;
      for (int64_t j = 0; j < kSpan; ++j) {
        a += la[j];
        bb += lb[j];
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
        const T* g = ACT != kActNone ? dx + (n * C + c) * L : grad_plane(n);
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
