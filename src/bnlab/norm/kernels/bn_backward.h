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
  // Without x's terms (evaluation: p = q = 0) dx = dy * k, as torch's; (x - mean) * 0
  // would be NaN at an infinite x or running mean.
  bool x_terms = false;
  for (int64_t c = 0; c < C; ++c) x_terms = x_terms || p[c] != T(0) || q[c] != T(0);
  at::parallel_for(0, M, std::max<int64_t>(1, kGrain / std::max<int64_t>(1, C)),
                   [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const T* xp = x + r * C;
      const T* g = dy + r * C;
      T* o = dx + r * C;
      if (!x_terms) {
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) o[c] = g[c] * k[c];
        continue;
      }
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) o[c] = g[c] * k[c] + (xp[c] - mean[c]) * p[c] + q[c];
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
  const std::vector<int64_t> out_shape = output_shape(input, lay);
  TORCH_CHECK(grad_out.sizes() == c10::IntArrayRef(out_shape), "bnlab: grad_out has shape ",
              grad_out.sizes(), ", the ", pool == 2 ? "pooled output " : "input ", out_shape);
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
        const auto kpq = grad_coefficients<scalar_t>(
            is[c], has_w ? static_cast<double>(w[c]) : 1.0, sdy[c], sdyx[c], count, train);
        k[c] = kpq[0];
        p[c] = kpq[1];
        q[c] = kpq[2];
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
