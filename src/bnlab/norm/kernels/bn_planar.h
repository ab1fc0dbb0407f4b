// bnlab kernels: the planar layout's own passes, (N, C, L) with each (n, c) plane of L
// values contiguous — forward statistics and output (optionally 2x2-pooled), and backward
// per channel — split between threads by channels or by samples (see split_by_samples).
// Part of cpu_kernels.cpp's single translation unit (included there, inside its anonymous
// namespace); split out only to keep each file readable.
#pragma once

// ---- forward ----------------------------------------------------------------------------

// One (n, c) plane of L values: q = act((p - m) * s + b); with pooling (W > 0: the plane's
// width) q gets its 2x2 average, the plane activated into ``scratch`` first (2L values: see
// pool_scratch).
template <int ACT, typename T>
inline void apply_plane(const T* p, T* q, int64_t L, int64_t W, T m, T s, T b, T* scratch) {
  T* a = W ? scratch : q;
#pragma omp simd
  for (int64_t i = 0; i < L; ++i) a[i] = activate<ACT>((p[i] - m) * s + b);
  if (W) pool_plane(a, q, L, W, scratch + L);
}

// Planar layout: channel c's sums of (x - k) and (x - k)^2 over samples [n0, n1), added to
// a and b, through kSpan independent accumulators (see kSpan).
template <typename T>
inline void channel_shifted_sums(const T* x, int64_t C, int64_t L, int64_t c, int64_t n0,
                                 int64_t n1, double k, double& a, double& b) {
  // In double throughout: the shift is one sample, which can lie far from the others, and
  // then sum(d^2) - sum(d)^2 / n cancels; float partial sums lost 1e-4 of the variance.
  double la[kSpan] = {}, lb[kSpan] = {};
  for (int64_t n = n0; n < n1; ++n) {
    const T* p = x + (n * C + c) * L;
    int64_t i = 0;
    for (; i + kSpan <= L; i += kSpan) {
#pragma omp simd
      for (int64_t j = 0; j < kSpan; ++j) {
        const double d = static_cast<double>(p[i + j]) - k;
        la[j] += d;
        lb[j] += d * d;
      }
    }
    for (int64_t j = 0; i < L; ++i, ++j) {
      const double d = static_cast<double>(p[i]) - k;
      la[j] += d;
      lb[j] += d * d;
    }
  }
  for (int64_t j = 0; j < kSpan; ++j) {
    a += la[j];
    b += lb[j];
  }
}

// A shift far from its channel's mean (an outlier as the channel's first value) cancels
// about log10(d^2 / var) digits in sum(d^2) - sum(d)^2 / n, d = mean - shift: past
// kRefineRatio the channel is summed again around the mean just found (float64 input lost
// 1e-10 of the variance with a 1e6 outlier first among 1e6 values; float32 input never shows
// it). NaN compares false: no second pass.
constexpr double kRefineRatio = 1e4;
inline bool shift_too_far(double d, double var) { return d * d > kRefineRatio * var; }

// Planar layout split by samples: every channel's sums of (x - shift[c]) and its square.
template <typename T>
void planar_shifted_sums(const T* x, const Layout& lay, std::vector<double>& s1,
                         std::vector<double>& s2, const std::vector<double>& shift) {
  const int64_t C = lay.c, L = lay.l;
  std::vector<double> both;
  planar_reduce(lay, both, [&](int64_t c, int64_t n0, int64_t n1, double& a, double& b) {
    channel_shifted_sums(x, C, L, c, n0, n1, shift[c], a, b);
  });
  s1.assign(both.begin(), both.begin() + C);
  s2.assign(both.begin() + C, both.end());
}

// Planar layout, training: each channel's statistics, running-statistic update and output
// in turn, so the second pass over a channel (N * L values) reads it from this core's L2
// cache instead of from memory shared with everything else.
template <int ACT, typename T>
void planar_forward_train(const T* x, T* y, const Layout& lay, const T* w, const T* b,
                          T* mean, T* invstd, T* rm, T* rv, double momentum, double eps) {
  const int64_t N = lay.n, C = lay.c, L = lay.l, W = lay.pool_w, out_l = W ? L / 4 : L;
  const double count = static_cast<double>(N) * L;
  at::parallel_for(0, C, std::max<int64_t>(1, kGrain / std::max<int64_t>(1, N * L)),
                   [&](int64_t c0, int64_t c1) {
    std::vector<T> scratch(pool_scratch(lay));
    for (int64_t c = c0; c < c1; ++c) {
      double k = static_cast<double>(x[c * L]);
      double a = 0.0, bb = 0.0;
      channel_shifted_sums(x, C, L, c, 0, N, k, a, bb);
      double d = a / count;
      double raw = (bb - a * d) / count;
      if (shift_too_far(d, raw)) {
        k += d;
        a = bb = 0.0;
        channel_shifted_sums(x, C, L, c, 0, N, k, a, bb);
        d = a / count;
        raw = (bb - a * d) / count;
      }
      const double var = raw < 0.0 ? 0.0 : raw;  // not std::max: NaN stays NaN
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
        apply_plane<ACT>(x + (n * C + c) * L, y + (n * C + c) * out_l, L, W, m, sc, sh,
                         scratch.data());
      }
    }
  });
}


// ---- backward ---------------------------------------------------------------------------

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

  // dy of plane (n, c): L values (with pooling, spread into ``spread`` first: 2L scratch
  // values, see pool_scratch)
  const T* grad_plane(int64_t n, int64_t c, T* spread) const {
    const T* g = dy + (n * C + c) * dy_l;
    if (!W) return g;
    unpool_plane(g, spread, L, W, spread + L);
    return spread;
  }

  // Channel c over samples [n0, n1): adds sum(dz) and sum(dz * (x - mean)) to a and b, where
  // dz = dy, or with an activation dy * act'(z) (stored in dx when dx is wanted).
  template <int ACT>
  void sums(int64_t c, int64_t n0, int64_t n1, double& a, double& b_out, T* spread) const {
    const double md = mean[c];
    const T m = mean[c], is = invstd[c];
    const T sc = w ? is * w[c] : is, sh = b ? b[c] : T(0);
    SpanSums<T> acc;
    auto term = [&](const T* p, const T* g, T* o, int64_t i, int64_t j) {
      T gi = g[i];
      if constexpr (ACT != kActNone) {
        gi *= activate_slope<ACT>((p[i] - m) * sc + sh);
        if (o) o[i] = gi;
      }
      acc.a[j] += static_cast<double>(gi);
      acc.b[j] += static_cast<double>(gi) * (static_cast<double>(p[i]) - md);
    };
    for (int64_t n = n0; n < n1; ++n) {
      const T* p = x + (n * C + c) * L;
      const T* g = grad_plane(n, c, spread);
      T* o = dx ? dx + (n * C + c) * L : nullptr;
      int64_t i = 0;
      for (; i + kSpan <= L; i += kSpan) {
        T local[kSpan];
        T* dz = o && ACT != kActNone ? o + i : local;  // with an activation dx keeps dz
#pragma omp simd
        for (int64_t j = 0; j < kSpan; ++j) {
          T gi = g[i + j];
          if constexpr (ACT != kActNone) gi *= activate_slope<ACT>((p[i + j] - m) * sc + sh);
          dz[j] = gi;
          acc.fa[j] += gi;
          acc.fb[j] += gi * (p[i + j] - m);
        }
        acc.end_span();
      }
      for (int64_t j = 0; i < L; ++i, ++j) term(p, g, o, i, j);
    }
    acc.add_to(a, b_out);
  }

  // The dx pass's coefficients for channel c (see grad_coefficients).
  std::array<T, 3> coefficients(int64_t c, double a, double bb, double count, bool train) const {
    return grad_coefficients<T>(invstd[c], w ? static_cast<double>(w[c]) : 1.0, a, bb, count,
                                train);
  }

  // Channel c over samples [n0, n1): the dx pass.
  template <int ACT>
  void input_grad(int64_t c, int64_t n0, int64_t n1, const std::array<T, 3>& kpq,
                  T* spread) const {
    const T m = mean[c], kc = kpq[0], pc = kpq[1], qc = kpq[2];
    // Without x's terms (evaluation: p = q = 0) dx = dy * k, as torch's; (x - m) * 0 would
    // be NaN at an infinite x or running mean.
    const bool x_terms = pc != T(0) || qc != T(0);
    for (int64_t n = n0; n < n1; ++n) {
      const T* p = x + (n * C + c) * L;
      // with an activation dx holds dz here, overwritten element by element
      const T* g = ACT != kActNone ? dx + (n * C + c) * L : grad_plane(n, c, spread);
      T* o = dx + (n * C + c) * L;
      if (!x_terms) {
#pragma omp simd
        for (int64_t i = 0; i < L; ++i) o[i] = g[i] * kc;
        continue;
      }
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
    std::vector<T> spread(pool_scratch(lay));
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
    std::vector<T> spread(pool_scratch(lay));
    g.template sums<ACT>(c, n0, n1, a, b, spread.data());
  });
  sdy.assign(both.begin(), both.begin() + C);
  sdyx.assign(both.begin() + C, both.end());
  if (!g.dx) return;
  std::vector<std::array<T, 3>> kpq(C);
  for (int64_t c = 0; c < C; ++c) kpq[c] = g.coefficients(c, sdy[c], sdyx[c], count, train);
  planar_samples_for(lay, [&](int64_t n0, int64_t n1) {
    std::vector<T> spread(pool_scratch(lay));
    for (int64_t c = 0; c < C; ++c) g.template input_grad<ACT>(c, n0, n1, kpq[c], spread.data());
  });
}
