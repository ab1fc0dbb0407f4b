// bnlab kernels: the activations fused after batch norm, and a vectorizable exp.
// Part of cpu_kernels.cpp's single translation unit (included there, inside its anonymous
// namespace); split out only to keep each file readable.
#pragma once

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
    return z <= T(0) ? T(0) : T(1);  // a NaN passes the gradient, as torch's relu backward
  } else {
    const T s = T(1) / (T(1) + exp_of(-z));
    return s * (T(1) - s);
  }
}

void check_activation(int64_t act) {
  TORCH_CHECK(act == kActNone || act == kActRelu || act == kActSigmoid,
              "bnlab: activation must be 0 (none), 1 (relu) or 2 (sigmoid), got ", act);
}
