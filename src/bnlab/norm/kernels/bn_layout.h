// bnlab kernels: the two memory layouts and the per-thread row reduction.
// Part of cpu_kernels.cpp's single translation unit (included there, inside its anonymous
// namespace); split out only to keep each file readable.
#pragma once

struct Layout {
  bool rows;  // (M, C) rows; else planar (N, C, L)
  int64_t n, c, l;  // planar: N, C, L; rows: M, C, 1
  int64_t pool_w = 0;  // planar (N, C, H, W) pooled 2x2 after the activation: W; else 0
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

// The input in its layout for a call with ``pool`` (1: none; 2: 2x2 average pooling, stride
// 2, after the activation): pooling needs (N, C, H, W) input, contiguous, H and W even.
std::pair<Tensor, Layout> canonical_pooled(const Tensor& x, int64_t pool) {
  TORCH_CHECK(pool == 1 || pool == 2, "bnlab: pool must be 1 (none) or 2, got ", pool);
  if (pool == 1) return canonical(x);
  TORCH_CHECK(x.dim() == 4 && x.is_contiguous() && x.size(2) % 2 == 0 && x.size(3) % 2 == 0,
              "bnlab: pool=2 needs contiguous (N, C, H, W) input with even H and W, got shape ",
              x.sizes(), x.is_contiguous() ? "" : " (not contiguous)");
  Layout lay{false, x.size(0), x.size(1), x.size(2) * x.size(3), x.size(3)};
  return {x, lay};
}

// The (N, C, H/2, W/2) shape a pooled call returns, or x's own.
std::vector<int64_t> output_shape(const Tensor& x, const Layout& lay) {
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  if (lay.pool_w) {
    shape[2] /= 2;
    shape[3] /= 2;
  }
  return shape;
}

// A new output for x: (N, C, H/2, W/2) when pooled, else shaped (and laid out) as x.
Tensor new_output(const Tensor& x, const Layout& lay) {
  return lay.pool_w ? at::empty(output_shape(x, lay), x.options()) : at::empty_like(x);
}

// dx = k*dz + (x - mean)*p + q per channel, from the channel's invstd, weight (1 without
// one) and sums a = sum(dz), b = sum(dz * (x - mean)) over its ``count`` values; without
// ``train`` the statistics were constants: p = q = 0. Returns {k, p, q}.
template <typename T>
std::array<T, 3> grad_coefficients(double invstd, double weight, double a, double b,
                                   double count, bool train) {
  const double k = invstd * weight;
  if (!train) return {static_cast<T>(k), T(0), T(0)};
  return {static_cast<T>(k), static_cast<T>(-k * (invstd * invstd) * b / count),
          static_cast<T>(-k * a / count)};
}

// Scratch values per thread for a pooled plane's passes (apply_plane, unpool_plane): 2L.
inline int64_t pool_scratch(const Layout& lay) { return lay.pool_w ? 2 * lay.l : 0; }

// 2x2 average pooling, stride 2, of one activated plane a (H x W = L values, H and W even)
// into out ((H/2) x (W/2)), in torch's avg_pool2d order (as bnlab's pooling kernel sums): the
// result is exactly pool(a). The even rows and the odd rows are first copied into two
// (H/2) x W blocks, so that the sums run as one loop over the plane: a loop per row pair
// (LeNet's rows are 24 and 8 values wide) kept the vector units mostly idle. ``scratch``: L
// values.
template <typename T>
inline void pool_plane(const T* a, T* out, int64_t L, int64_t W, T* scratch) {
  T* even = scratch;
  T* odd = scratch + L / 2;
  for (int64_t h = 0; h < L / W; h += 2) {
    const T* src = a + h * W;
    T* e = even + (h / 2) * W;
    T* o = odd + (h / 2) * W;
#pragma omp simd
    for (int64_t i = 0; i < W; ++i) {
      e[i] = src[i];
      o[i] = src[W + i];
    }
  }
#pragma omp simd
  for (int64_t k = 0; k < L / 4; ++k) {
    // from zero, as torch sums: a block of -0.0 averages to +0.0
    out[k] = ((((T(0) + even[2 * k]) + even[2 * k + 1]) + odd[2 * k]) + odd[2 * k + 1]) *
             T(0.25);
  }
}

// avg_pool2d's gradient for one plane: each of the H x W inputs gets its window's output
// gradient / 4 (g: (H/2) x (W/2) values; out: H x W). Each pooled row is spread across in
// one loop over the plane, into ``half`` ((H/2) x W: L/2 scratch values), then copied to its
// two rows.
template <typename T>
inline void unpool_plane(const T* g, T* out, int64_t L, int64_t W, T* half) {
#pragma omp simd
  for (int64_t k = 0; k < L / 4; ++k) {
    const T v = g[k] * T(0.25);
    half[2 * k] = v;
    half[2 * k + 1] = v;
  }
  for (int64_t h = 0; h < L / W; h += 2) {
    const T* s = half + (h / 2) * W;
    T* o = out + h * W;
#pragma omp simd
    for (int64_t i = 0; i < W; ++i) {
      o[i] = s[i];
      o[W + i] = s[i];
    }
  }
}

// Per-thread partial sums of 2C values (C of a, then C of b), added across threads into
// ``out``: ``split(body)`` runs ``body(lo, hi)`` on the threads' ranges; body(lo, hi, acc)
// adds its range's sums to its thread's ``acc`` (2C values).
template <typename Split, typename Body>
void per_thread_sums(int64_t C, std::vector<double>& out, Split&& split, Body&& body) {
  const int threads = at::get_num_threads();
  std::vector<double> partial(static_cast<size_t>(threads) * 2 * C, 0.0);
  std::vector<char> used(threads, 0);
  split([&](int64_t lo, int64_t hi) {
    const int t = at::get_thread_num();
    used[t] = 1;
    body(lo, hi, partial.data() + static_cast<size_t>(t) * 2 * C);
  });
  out.assign(static_cast<size_t>(2) * C, 0.0);
  for (int t = 0; t < threads; ++t) {
    if (!used[t]) continue;
    const double* acc = partial.data() + static_cast<size_t>(t) * 2 * C;
    for (int64_t j = 0; j < 2 * C; ++j) out[j] += acc[j];
  }
}

// Rows layout: per-channel sums over rows. Threads take blocks of rows; each walks its rows
// in tiles of kTileRows, and within a tile channel block by channel block (kLanes channels),
// handing ``tile_fn(r0, r1, c0, width, a, b)`` two kLanes-wide accumulators to fill with
// that block's sums over rows [r0, r1) — small fixed-size arrays the compiler keeps in
// vector registers, where a row-at-a-time loop would load and store every channel's
// accumulators for every row. The tile's sums are added to the thread's partial sums, and
// those across threads into ``out`` (C values of a, then C of b).
constexpr int64_t kLanes = 16, kTileRows = 64;

// Planar layout: a channel's sums run over spans of kSpan values into kSpan separate
// accumulators (four AVX-512 registers of doubles, two of floats), so consecutive additions
// do not wait on one another; a single vector accumulator made every span wait for the
// previous one's add.
constexpr int64_t kSpan = 32;

// The planar backward's sums: partial sums in the input's type over at most kBlockSpans spans
// (1,024 values, 32 additions per lane), then added into double accumulators (torch's CPU
// backward sums each whole plane in the input's type, then the planes in double). Float sums
// run at twice double's vector width (a LeNet layer's backward sums pass took ~30% less
// time); rounding stays bounded by the 32 additions a lane makes per block. Blocks run on
// across planes, so short planes (LeNet's second layer: 64 values) do not add a flush per
// plane. (The forward statistics stay in double: see channel_shifted_sums.)
constexpr int64_t kBlockSpans = 32;

template <typename T>
struct SpanSums {
  T fa[kSpan] = {}, fb[kSpan] = {};  // this block's partial sums
  double a[kSpan] = {}, b[kSpan] = {};
  int64_t spans = 0;  // in this block so far

  void end_span() {
    if (++spans == kBlockSpans) flush();
  }
  void flush() {
#pragma omp simd
    for (int64_t j = 0; j < kSpan; ++j) {
      a[j] += fa[j];
      b[j] += fb[j];
      fa[j] = T(0);
      fb[j] = T(0);
    }
    spans = 0;
  }
  // adds the totals to out_a and out_b
  void add_to(double& out_a, double& out_b) {
    flush();
    for (int64_t j = 0; j < kSpan; ++j) {
      out_a += a[j];
      out_b += b[j];
    }
  }
};

template <typename F>
void rows_reduce(int64_t M, int64_t C, std::vector<double>& out, F&& tile_fn) {
  auto split = [&](auto&& fn) {
    at::parallel_for(0, M, std::max<int64_t>(1, kGrain / std::max<int64_t>(1, C)), fn);
  };
  per_thread_sums(C, out, split, [&](int64_t m0, int64_t m1, double* acc) {
    for (int64_t r0 = m0; r0 < m1; r0 += kTileRows) {
      const int64_t r1 = std::min(m1, r0 + kTileRows);
      for (int64_t c0 = 0; c0 < C; c0 += kLanes) {
        double a[kLanes] = {}, b[kLanes] = {};
        const int64_t width = std::min(kLanes, C - c0);
        tile_fn(r0, r1, c0, width, a, b);
        for (int64_t j = 0; j < width; ++j) {
          acc[c0 + j] += a[j];
          acc[C + c0 + j] += b[j];
        }
      }
    }
  });
}

// Planar layout, split by samples: threads take blocks of whole samples, the same blocks in
// every pass (planar_samples_for), as the convolution and pooling kernels around a layer
// split their work, so each core reads what it wrote itself. ``channel_fn(c, n0, n1, a, b)``
// adds channel c's sums over samples [n0, n1) to a and b; the threads' partial sums are
// added into ``out`` (C values of a, then C of b).
template <typename F>
void planar_samples_for(const Layout& lay, F&& fn) {
  at::parallel_for(0, lay.n, std::max<int64_t>(1, kGrain / std::max<int64_t>(1, lay.c * lay.l)),
                   fn);
}

template <typename F>
void planar_reduce(const Layout& lay, std::vector<double>& out, F&& channel_fn) {
  const int64_t C = lay.c;
  auto split = [&](auto&& fn) { planar_samples_for(lay, fn); };
  per_thread_sums(C, out, split, [&](int64_t n0, int64_t n1, double* acc) {
    for (int64_t c = 0; c < C; ++c) channel_fn(c, n0, n1, acc[c], acc[C + c]);
  });
}

// Whether a planar call splits its work by samples (else by channels, each channel's two
// passes back to back on one core: the second finds the channel in L2 when it fits). By
// samples when every thread gets a sample and a thread's share of the input (at most 4 MiB)
// stays in cache between the passes: then a layer reads what the same core's convolution
// wrote, and its output is where the next layer's thread reads it. Cross-core traffic is what
// grows most when the machine is busy: in a LeNet step (batch 64 or 256) with the machine
// slowed by its neighbours, splitting by samples took the BN layers' cost over LeNet without
// BN from ~1.22x to ~1.12x. $BNLAB_PLANAR_SPLIT=samples|channels overrides (tests, tuning).
bool split_by_samples(const Layout& lay, int64_t itemsize) {
  if (lay.rows) return false;
  if (const char* force = std::getenv("BNLAB_PLANAR_SPLIT")) {
    if (std::strcmp(force, "samples") == 0) return true;
    if (std::strcmp(force, "channels") == 0) return false;
  }
  const int64_t threads = at::get_num_threads();
  return lay.n >= threads && lay.n * lay.c * lay.l * itemsize <= threads * (int64_t{4} << 20);
}

// The raw ops are public (torch.ops.bnlab.*): per-channel tensors must match the input's
// channels, dtype and device, and be contiguous, or the kernels would read out of bounds.
void check_channel_tensor(const Tensor& x, const c10::optional<Tensor>& t, const char* name) {
  if (!t.has_value() || !t->defined()) return;
  TORCH_CHECK(t->numel() == x.size(1), "bnlab: ", name, " has ", t->numel(),
              " elements, the input has ", x.size(1), " channels");
  TORCH_CHECK(t->scalar_type() == x.scalar_type() && t->device() == x.device() &&
                  t->is_contiguous(),
              "bnlab: ", name, " must be a contiguous ", x.scalar_type(), " tensor on ",
              x.device());
}

void check_input(const Tensor& x, bool training) {
  TORCH_CHECK(x.dim() >= 2 && x.numel() > 0, "bnlab: batch_norm needs a non-empty input of "
              "at least 2 dimensions (N, C, *), got shape ", x.sizes());
  TORCH_CHECK(!training || x.numel() / x.size(1) > 1,
              "bnlab: expected more than 1 value per channel when training, got input size ",
              x.sizes());
}

