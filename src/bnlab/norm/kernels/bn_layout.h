// bnlab kernels: the two memory layouts and the per-thread row reduction.
// Part of cpu_kernels.cpp's single translation unit (included there, inside its anonymous
// namespace); split out only to keep each file readable.
#pragma once

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

// Rows layout: per-channel sums over rows. Threads take blocks of rows; each walks its rows
// in tiles of kTileRows, and within a tile channel block by channel block (kLanes channels),
// handing ``tile_fn(r0, r1, c0, width, a, b)`` two kLanes-wide accumulators to fill with
// that block's sums over rows [r0, r1) — small fixed-size arrays the compiler keeps in
// vector registers, where a row-at-a-time loop would load and store every channel's
// accumulators for every row. The tile's sums are added to the thread's partial sums, and
// those across threads into ``out`` (C values of a, then C of b).
constexpr int64_t kLanes = 16, kTileRows = 64;

// Planar layout: a channel's sums run over spans of kSpan values into kSpan separate double
// accumulators (four AVX-512 registers each), so consecutive additions do not wait on one
// another; a single vector accumulator made every span wait for the previous one's add.
constexpr int64_t kSpan = 32;

template <typename F>
void rows_reduce(int64_t M, int64_t C, std::vector<double>& out, F&& tile_fn) {
  const int threads = at::get_num_threads();
  std::vector<double> partial(static_cast<size_t>(threads) * 2 * C, 0.0);
  std::vector<char> used(threads, 0);
  at::parallel_for(0, M, std::max<int64_t>(1, kGrain / std::max<int64_t>(1, C)),
                   [&](int64_t m0, int64_t m1) {
    const int t = at::get_thread_num();
    used[t] = 1;
    double* acc = partial.data() + static_cast<size_t>(t) * 2 * C;
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
  out.assign(static_cast<size_t>(2) * C, 0.0);
  for (int t = 0; t < threads; ++t) {
    if (!used[t]) continue;
    const double* acc = partial.data() + static_cast<size_t>(t) * 2 * C;
    for (int64_t j = 0; j < 2 * C; ++j) out[j] += acc[j];
  }
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

