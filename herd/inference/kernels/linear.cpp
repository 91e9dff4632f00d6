// Weight-only linear layers for decoding: y (M, N) = x (M, K) @ W (N, K)^T with small M.
//
// At batch 1 a decode step is a chain of matrix-vector products, bound by how fast the weights
// stream from memory. These kernels read each weight row once, convert it to float32 in registers
// and multiply it against all M rows of x, so reading fewer bytes (bfloat16, int8, int4) is
// directly faster. Layouts are those of herd/formats/packed.py: groups of 32 inputs, float16
// scales (and mins for int4), GGUF's nibble order. x and y are float32.
//
// Rows of W are split across torch's intra-op threads. The AVX2+FMA+F16C path is used when the
// compiler targets it, with AVX512-BF16 bfloat16 kernels and AVX512-VNNI int8/int4 kernels (tiles.h, on weights
// rearranged into tiles of 16 rows at load) where the build enables those (kernels/__init__.py asks for them when
// the CPU has them); the portable loops are the reference on other CPUs.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <cstdint>
#include <cstring>
#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>
#define HERD_AVX2 1
#if defined(__AVX512BF16__) && defined(__AVX512F__)
// dpbf16ps: 32 bfloat16 products summed in pairs into 16 float32 lanes, one instruction.
#define HERD_BF16 1
#endif
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
// VNNI's dpbusd multiplies 32 unsigned by 32 signed bytes and adds each 4 into an int32 lane in one instruction,
// where AVX2 needs maddubs + madd; the 4-bit weights are unsigned already.
#define HERD_VNNI 1
#endif
#endif

namespace {

constexpr int64_t kGroup = 32;
constexpr int64_t kMBlock = 4;  // rows of x sharing one pass over a weight row

inline float half_to_float(uint16_t h) { return static_cast<float>(c10::Half(h, c10::Half::from_bits())); }

#ifdef HERD_AVX2
inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Eight float32 weights at a time from each storage type.
inline __m256 load8(const float* w) { return _mm256_loadu_ps(w); }
inline __m256 load8(const at::BFloat16* w) {
  __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(b), 16));
}

// Float weights (float32 or bfloat16): one weight row against MB rows of x. MB is a template argument
// so that the accumulators live in registers; U independent accumulators per row of x hide the FMA
// latency (one chain would cap a core at 8 weights per 4 cycles). U is the same for every MB so that a
// row's sums are added in the same order whatever else is in the batch: a request gives the same
// numbers alone and batched with others (the int kernels below have one accumulator per row anyway).
template <int MB, typename W>
void dense_row(const W* w, const float* x, int64_t K, int64_t m0, float* out, int64_t N) {
  constexpr int U = 2;
  __m256 acc[MB][U];
  for (int i = 0; i < MB; ++i)
    for (int u = 0; u < U; ++u) acc[i][u] = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 8 * U <= K; k += 8 * U) {
    for (int u = 0; u < U; ++u) {
      __m256 wv = load8(w + k + 8 * u);
      for (int i = 0; i < MB; ++i)
        acc[i][u] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + (m0 + i) * K + k + 8 * u), acc[i][u]);
    }
  }
  for (; k + 8 <= K; k += 8) {
    __m256 wv = load8(w + k);
    for (int i = 0; i < MB; ++i) acc[i][0] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + (m0 + i) * K + k), acc[i][0]);
  }
  for (int i = 0; i < MB; ++i) {
    for (int u = 1; u < U; ++u) acc[i][0] = _mm256_add_ps(acc[i][0], acc[i][u]);
    float s = hsum(acc[i][0]);
    for (int64_t j = k; j < K; ++j) s += static_cast<float>(w[j]) * x[(m0 + i) * K + j];
    out[i * N] = s;
  }
}

// The int8/int4 kernels take x quantized to int8 in groups of 32 (xq, with one float scale per
// group, xd), as llama.cpp's Q8_0/Q4 dot products do: integer multiply-adds (maddubs) then handle
// 32 weights in a few instructions, where converting every weight to float would leave the kernel
// compute-bound. The rounding of x adds less error than the 4- or 8-bit weights already carry.

// int8 groups: sum_g wd_g * xd_g * dot(q_g, xq_g).
template <int MB>
void q8_row(const int8_t* q, const uint16_t* sc, const int8_t* xq, const float* xd, int64_t K, int64_t m0,
            float* out, int64_t N) {
  constexpr int64_t mb = MB;
  const int64_t G = K / kGroup;
  const __m256i ones = _mm256_set1_epi16(1);
  __m256 acc[kMBlock];
  for (int64_t i = 0; i < mb; ++i) acc[i] = _mm256_setzero_ps();
  for (int64_t g = 0; g < G; ++g) {
    __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + g * kGroup));
    __m256i aw = _mm256_sign_epi8(w, w);  // |w| as unsigned bytes (-128 -> 128 is still right)
    const float wd = _cvtsh_ss(sc[g]);
    for (int64_t i = 0; i < mb; ++i) {
      __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + (m0 + i) * K + g * kGroup));
      __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(aw, _mm256_sign_epi8(x, w)), ones);
      acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(wd * xd[(m0 + i) * G + g]), acc[i]);
    }
  }
  for (int64_t i = 0; i < mb; ++i) out[i * N] = hsum(acc[i]);
}

// int4 groups: sum_g wd_g * xd_g * dot(q_g, xq_g) + min_g * sum(x_g); the group sums of x are precomputed.
template <int MB>
void q4_row(const uint8_t* q, const uint16_t* sc, const uint16_t* mn, const int8_t* xq, const float* xd,
            const float* xsum, int64_t K, int64_t m0, float* out, int64_t N) {
  constexpr int64_t mb = MB;
  const int64_t G = K / kGroup;
  const __m128i low4 = _mm_set1_epi8(0x0F);
  const __m256i ones = _mm256_set1_epi16(1);
  __m256 acc[kMBlock], accm[kMBlock];
  for (int64_t i = 0; i < mb; ++i) acc[i] = accm[i] = _mm256_setzero_ps();
  for (int64_t g = 0; g < G; ++g) {
    __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(q + g * kGroup / 2));
    // Low nibbles are values 0..15 of the group, high nibbles 16..31: one 32-byte vector in x's order.
    __m256i w = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(b, 4), low4), _mm_and_si128(b, low4));
    const float wd = _cvtsh_ss(sc[g]);
    for (int64_t i = 0; i < mb; ++i) {
      __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + (m0 + i) * K + g * kGroup));
      __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(w, x), ones);
      acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(wd * xd[(m0 + i) * G + g]), acc[i]);
    }
  }
  int64_t g = 0;
  for (; g + 8 <= G; g += 8) {
    __m256 m = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(mn + g)));
    for (int64_t i = 0; i < mb; ++i) accm[i] = _mm256_fmadd_ps(m, _mm256_loadu_ps(xsum + (m0 + i) * G + g), accm[i]);
  }
  for (int64_t i = 0; i < mb; ++i) {
    float s = hsum(_mm256_add_ps(acc[i], accm[i]));
    for (int64_t j = g; j < G; ++j) s += _cvtsh_ss(mn[j]) * xsum[(m0 + i) * G + j];
    out[i * N] = s;
  }
}


// Attention's q.k: 64-128 products per key. The plain loop stays scalar (no reassociation of a float sum
// without -ffast-math), and at batch 1 the keys' dot products are most of a block's time outside the weights.
inline float dot(const float* a, const float* b, int64_t n) {
  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
  int64_t e = 0;
  for (; e + 16 <= n; e += 16) {
    s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + e), _mm256_loadu_ps(b + e), s0);
    s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + e + 8), _mm256_loadu_ps(b + e + 8), s1);
  }
  for (; e + 8 <= n; e += 8) s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + e), _mm256_loadu_ps(b + e), s0);
  float s = hsum(_mm256_add_ps(s0, s1));
  for (; e < n; ++e) s += a[e] * b[e];
  return s;
}

// e^x of 8 floats: x = n ln2 + r with |r| <= ln2 / 2, e^r = 1 + r + r^2 P(r) with Cephes' degree-5 P, and 2^n built
// in the exponent bits; x is clamped to [-87, 88] (below it the result is ~1e-38, not 0). SwiGLU built on it stays
// within 4 ulp of a float64 reference over [-80, 80] (tests/inference/test_kernels.py).
// The softmax and SwiGLU exponentials, one per key per head and one per hidden unit, cost more than the rest of
// those loops when each goes through libm.
inline __m256 exp8(__m256 x) {
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.0f)), _mm256_set1_ps(88.0f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);  // ln 2 in two parts: n * hi is exact
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

// silu(g) * u over n values.
inline void silu_mul_row(const float* g, const float* u, float* o, int64_t n) {
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    const __m256 gv = _mm256_loadu_ps(g + j);
    const __m256 den = _mm256_add_ps(_mm256_set1_ps(1.0f), exp8(_mm256_sub_ps(_mm256_setzero_ps(), gv)));
    _mm256_storeu_ps(o + j, _mm256_mul_ps(_mm256_div_ps(gv, den), _mm256_loadu_ps(u + j)));
  }
  for (; j < n; ++j) o[j] = g[j] / (1.0f + std::exp(-g[j])) * u[j];
}

// p[j] = e^(p[j] - best), 0 where p[j] is -inf (a masked key); returns their sum.
inline float softmax_weights(float* p, int64_t n, float best) {
  const __m256 b = _mm256_set1_ps(best), masked = _mm256_set1_ps(-INFINITY);
  __m256 total = _mm256_setzero_ps();
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    const __m256 v = _mm256_loadu_ps(p + j);
    const __m256 w = _mm256_andnot_ps(_mm256_cmp_ps(v, masked, _CMP_EQ_OQ), exp8(_mm256_sub_ps(v, b)));
    _mm256_storeu_ps(p + j, w);
    total = _mm256_add_ps(total, w);
  }
  float s = hsum(total);
  for (; j < n; ++j) s += (p[j] = p[j] == -INFINITY ? 0.0f : std::exp(p[j] - best));
  return s;
}

// y (H) = sum_j p[j] * v[j * H ..], over the keys with a nonzero weight (a masked key's value row is never read). 32
// outputs at a time stay in registers across all keys: accumulating into y in memory costs a load and a store per 8
// products.
inline void weighted_rows(const float* p, const float* v, int64_t n, int64_t H, float* y) {
  int64_t e0 = 0;
  for (; e0 + 32 <= H; e0 += 32) {
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    for (int64_t j = 0; j < n; ++j) {
      if (p[j] == 0.0f) continue;
      const __m256 w = _mm256_set1_ps(p[j]);
      const float* row = v + j * H + e0;
      for (int u = 0; u < 4; ++u) acc[u] = _mm256_fmadd_ps(w, _mm256_loadu_ps(row + 8 * u), acc[u]);
    }
    for (int u = 0; u < 4; ++u) _mm256_storeu_ps(y + e0 + 8 * u, acc[u]);
  }
  for (int64_t e = e0; e < H; ++e) {
    float a = 0.0f;
    for (int64_t j = 0; j < n; ++j)
      if (p[j] != 0.0f) a += p[j] * v[j * H + e];
    y[e] = a;
  }
}

#else  // portable reference loops

inline void weighted_rows(const float* p, const float* v, int64_t n, int64_t H, float* y) {
  std::fill(y, y + H, 0.0f);
  for (int64_t j = 0; j < n; ++j) {
    if (p[j] == 0.0f) continue;
    for (int64_t e = 0; e < H; ++e) y[e] += p[j] * v[j * H + e];
  }
}

inline void silu_mul_row(const float* g, const float* u, float* o, int64_t n) {
  for (int64_t j = 0; j < n; ++j) o[j] = g[j] / (1.0f + std::exp(-g[j])) * u[j];
}

inline float softmax_weights(float* p, int64_t n, float best) {
  float s = 0;
  for (int64_t j = 0; j < n; ++j) s += (p[j] = p[j] == -INFINITY ? 0.0f : std::exp(p[j] - best));
  return s;
}

inline float dot(const float* a, const float* b, int64_t n) {
  float s = 0;
  for (int64_t e = 0; e < n; ++e) s += a[e] * b[e];
  return s;
}

template <int MB, typename W>
void dense_row(const W* w, const float* x, int64_t K, int64_t m0, float* out, int64_t N) {
  constexpr int64_t mb = MB;
  for (int64_t i = 0; i < mb; ++i) {
    float s = 0;
    for (int64_t k = 0; k < K; ++k) s += static_cast<float>(w[k]) * x[(m0 + i) * K + k];
    out[i * N] = s;
  }
}

template <int MB>
void q8_row(const int8_t* q, const uint16_t* sc, const int8_t* xq, const float* xd, int64_t K, int64_t m0,
            float* out, int64_t N) {
  constexpr int64_t mb = MB;
  const int64_t G = K / kGroup;
  for (int64_t i = 0; i < mb; ++i) {
    float s = 0;
    for (int64_t g = 0; g < G; ++g) {
      int32_t d = 0;
      for (int64_t j = 0; j < kGroup; ++j) d += q[g * kGroup + j] * xq[(m0 + i) * K + g * kGroup + j];
      s += half_to_float(sc[g]) * xd[(m0 + i) * G + g] * d;
    }
    out[i * N] = s;
  }
}

template <int MB>
void q4_row(const uint8_t* q, const uint16_t* sc, const uint16_t* mn, const int8_t* xq, const float* xd,
            const float* xsum, int64_t K, int64_t m0, float* out, int64_t N) {
  constexpr int64_t mb = MB;
  const int64_t G = K / kGroup;
  for (int64_t i = 0; i < mb; ++i) {
    float s = 0;
    for (int64_t g = 0; g < G; ++g) {
      const int8_t* xg = xq + (m0 + i) * K + g * kGroup;
      int32_t d = 0;
      for (int64_t j = 0; j < kGroup / 2; ++j) {
        uint8_t b = q[g * kGroup / 2 + j];
        d += (b & 0xF) * xg[j] + (b >> 4) * xg[j + kGroup / 2];
      }
      s += half_to_float(sc[g]) * xd[(m0 + i) * G + g] * d + half_to_float(mn[g]) * xsum[(m0 + i) * G + g];
    }
    out[i * N] = s;
  }
}
#endif

#ifdef HERD_BF16
// bfloat16 weights against x rounded to bfloat16 (xb, as a bfloat16 model's activations are, and as llama.cpp's BF16
// path does): each 64-byte load of the weight row is one dpbf16ps per row of x, where widening to float32 costs three
// instructions per 16 weights.
template <int MB>
void bf16_row_dp(const at::BFloat16* w, const at::BFloat16* xb, int64_t K, int64_t m0, float* out, int64_t N) {
  __m512 acc[MB][2];
  for (int i = 0; i < MB; ++i) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 64 <= K; k += 64) {
    const __m512bh w0 = (__m512bh)_mm512_loadu_si512(w + k), w1 = (__m512bh)_mm512_loadu_si512(w + k + 32);
    for (int i = 0; i < MB; ++i) {
      const at::BFloat16* x = xb + (m0 + i) * K + k;
      acc[i][0] = _mm512_dpbf16_ps(acc[i][0], (__m512bh)_mm512_loadu_si512(x), w0);
      acc[i][1] = _mm512_dpbf16_ps(acc[i][1], (__m512bh)_mm512_loadu_si512(x + 32), w1);
    }
  }
  for (; k + 32 <= K; k += 32) {
    const __m512bh w0 = (__m512bh)_mm512_loadu_si512(w + k);
    for (int i = 0; i < MB; ++i)
      acc[i][0] = _mm512_dpbf16_ps(acc[i][0], (__m512bh)_mm512_loadu_si512(xb + (m0 + i) * K + k), w0);
  }
  for (int i = 0; i < MB; ++i) {
    float s = _mm512_reduce_add_ps(_mm512_add_ps(acc[i][0], acc[i][1]));
    for (int64_t j = k; j < K; ++j) s += static_cast<float>(w[j]) * static_cast<float>(xb[(m0 + i) * K + j]);
    out[i * N] = s;
  }
}
#endif

void check_x(const at::Tensor& x, int64_t K, const char* op) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous() && x.device().is_cpu(), op,
              ": x must be a contiguous float32 CPU matrix");
  TORCH_CHECK(x.size(1) == K, op, ": x has ", x.size(1), " features, the weight expects ", K);
}

// Split the N weight rows across threads. Each weight row is read from memory once: it stays in L1 while every
// block of x rows passes over it (a thread's share of a matrix is megabytes, so walking it once per block of x
// would stream it from memory M / 4 times).
// row<MB>(n, m0, out) computes out[m * N] for rows m0..m0+MB of x against weight row n.
template <typename RowFn>
at::Tensor run_rows(const at::Tensor& x, int64_t N, int64_t bytes_per_row, RowFn row) {
  const int64_t M = x.size(0);
  at::Tensor out = at::empty({M, N}, x.options());
  float* o = out.data_ptr<float>();
  // Enough rows per task that a thread streams at least ~64 KB of weights.
  const int64_t grain = std::max<int64_t>(1, (64 << 10) / std::max<int64_t>(1, bytes_per_row));
  at::parallel_for(0, N, grain, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n)
      for (int64_t m0 = 0; m0 < M; m0 += kMBlock) {
        float* om = o + m0 * N + n;
        switch (std::min(kMBlock, M - m0)) {
          case 1: row(std::integral_constant<int, 1>{}, n, m0, om); break;
          case 2: row(std::integral_constant<int, 2>{}, n, m0, om); break;
          case 3: row(std::integral_constant<int, 3>{}, n, m0, om); break;
          default: row(std::integral_constant<int, 4>{}, n, m0, om);
        }
      }
  });
  return out;
}

at::Tensor linear_dense(const at::Tensor& x, const at::Tensor& w) {
  TORCH_CHECK(w.dim() == 2 && w.is_contiguous(), "herd::linear_dense: weight must be a contiguous matrix");
  const int64_t N = w.size(0), K = w.size(1);
  check_x(x, K, "herd::linear_dense");
  const float* xp = x.data_ptr<float>();
  if (w.scalar_type() == at::kFloat) {
    const float* wp = w.data_ptr<float>();
    return run_rows(x, N, K * 4, [&](auto mb, int64_t n, int64_t m0, float* o) {
      dense_row<decltype(mb)::value>(wp + n * K, xp, K, m0, o, N);
    });
  }
  TORCH_CHECK(w.scalar_type() == at::kBFloat16, "herd::linear_dense: weight must be float32 or bfloat16");
  const at::BFloat16* wp = w.data_ptr<at::BFloat16>();
#ifdef HERD_BF16
  const at::Tensor xb = x.to(at::kBFloat16);  // round to nearest even, as torch rounds
  const at::BFloat16* xbp = xb.data_ptr<at::BFloat16>();
  return run_rows(x, N, K * 2, [&](auto mb, int64_t n, int64_t m0, float* o) {
    bf16_row_dp<decltype(mb)::value>(wp + n * K, xbp, K, m0, o, N);
  });
#else
  return run_rows(x, N, K * 2, [&](auto mb, int64_t n, int64_t m0, float* o) {
    dense_row<decltype(mb)::value>(wp + n * K, xp, K, m0, o, N);
  });
#endif
}

void check_groups(const at::Tensor& t, int64_t N, int64_t G, const char* what) {
  TORCH_CHECK(t.dim() == 2 && t.size(0) == N && t.size(1) == G && t.scalar_type() == at::kHalf && t.is_contiguous(),
              what, " must be contiguous float16 of shape (", N, ", ", G, ")");
}

// x (M, K) float32 -> int8 values (M, K), per-group scales d (M, K/32) with x ~ d * xq, d = max|x| / 127,
// and the group sums of the rounded x, d * sum(xq) (M, K/32), which the int4 min term needs.
struct QuantizedX {
  at::Tensor xq, xd, xsum, xtotal;
};

QuantizedX quantize_x(const at::Tensor& x) {
  const int64_t M = x.size(0), K = x.size(1), G = K / kGroup;
  QuantizedX r{at::empty({M, K}, x.options().dtype(at::kChar)), at::empty({M, G}, x.options()),
               at::empty({M, G}, x.options()), at::empty({M, G}, x.options().dtype(at::kInt))};
  const float* xp = x.data_ptr<float>();
  int8_t* q = r.xq.data_ptr<int8_t>();
  float* d = r.xd.data_ptr<float>();
  float* sum = r.xsum.data_ptr<float>();
  int32_t* xt = r.xtotal.data_ptr<int32_t>();
  for (int64_t g = 0; g < M * G; ++g) {
    const float* v = xp + g * kGroup;
    float amax = 0;
    for (int64_t j = 0; j < kGroup; ++j) amax = std::max(amax, std::fabs(v[j]));
    const float scale = amax / 127.0f, inv = amax > 0 ? 127.0f / amax : 0.0f;
    int32_t total = 0;
    for (int64_t j = 0; j < kGroup; ++j) {
      const int32_t r8 = std::clamp(static_cast<int32_t>(std::nearbyint(v[j] * inv)), -127, 127);
      q[g * kGroup + j] = static_cast<int8_t>(r8);
      total += r8;
    }
    d[g] = scale;
    xt[g] = total;
    sum[g] = scale * static_cast<float>(total);
  }
  return r;
}

#ifdef HERD_VNNI
#include "tiles.h"
#endif

// A tiled weight (3-D qweight, herd/inference/quantize.py's TiledWeight) runs on the VNNI tile kernels; a packed one
// ((N, K) or (N, K/2) qweight) on the row kernels.
bool is_tiled(const at::Tensor& q, const char* op) {
#ifndef HERD_VNNI
  TORCH_CHECK(q.dim() != 3, op, ": tiled weights need the AVX512-VNNI build of the kernels");
#endif
  return q.dim() == 3;
}

at::Tensor linear_int8(const at::Tensor& x, const at::Tensor& q, const at::Tensor& scales) {
  if (is_tiled(q, "herd::linear_int8")) {  // throws where the build has no tile kernels
#ifdef HERD_VNNI
    return linear_tiled(x, q, scales, c10::nullopt, "herd::linear_int8");
#endif
  }
  TORCH_CHECK(q.dim() == 2 && q.scalar_type() == at::kChar && q.is_contiguous(), "herd::linear_int8: bad qweight");
  const int64_t N = q.size(0), K = q.size(1);
  TORCH_CHECK(K % kGroup == 0, "herd::linear_int8: K=", K, " is not a multiple of ", kGroup);
  check_x(x, K, "herd::linear_int8");
  const int64_t G = K / kGroup;
  check_groups(scales, N, G, "herd::linear_int8: scales");
  const QuantizedX qx = quantize_x(x);
  const int8_t* xqp = qx.xq.data_ptr<int8_t>();
  const float* xdp = qx.xd.data_ptr<float>();
  const int8_t* qp = q.data_ptr<int8_t>();
  const uint16_t* sp = reinterpret_cast<const uint16_t*>(scales.data_ptr<at::Half>());
  return run_rows(x, N, K + 2 * G, [&](auto mb, int64_t n, int64_t m0, float* o) {
    q8_row<decltype(mb)::value>(qp + n * K, sp + n * G, xqp, xdp, K, m0, o, N);
  });
}

at::Tensor linear_int4(const at::Tensor& x, const at::Tensor& q, const at::Tensor& scales, const at::Tensor& mins) {
  if (is_tiled(q, "herd::linear_int4")) {  // throws where the build has no tile kernels
#ifdef HERD_VNNI
    return linear_tiled(x, q, scales, mins, "herd::linear_int4");
#endif
  }
  TORCH_CHECK(q.dim() == 2 && q.scalar_type() == at::kByte && q.is_contiguous(), "herd::linear_int4: bad qweight");
  const int64_t N = q.size(0), K = q.size(1) * 2;
  TORCH_CHECK(K % kGroup == 0, "herd::linear_int4: K=", K, " is not a multiple of ", kGroup);
  check_x(x, K, "herd::linear_int4");
  const int64_t G = K / kGroup;
  check_groups(scales, N, G, "herd::linear_int4: scales");
  check_groups(mins, N, G, "herd::linear_int4: mins");
  // The min term uses the group sums of the rounded x, the activations the dot products see.
  const QuantizedX qx = quantize_x(x);
  const int8_t* xqp = qx.xq.data_ptr<int8_t>();
  const float* xdp = qx.xd.data_ptr<float>();
  const float* xs = qx.xsum.data_ptr<float>();
  const uint8_t* qp = q.data_ptr<uint8_t>();
  const uint16_t* sp = reinterpret_cast<const uint16_t*>(scales.data_ptr<at::Half>());
  const uint16_t* mp = reinterpret_cast<const uint16_t*>(mins.data_ptr<at::Half>());
  return run_rows(x, N, K / 2 + 4 * G, [&](auto mb, int64_t n, int64_t m0, float* o) {
    q4_row<decltype(mb)::value>(qp + n * K / 2, sp + n * G, mp + n * G, xqp, xdp, xs, K, m0, o, N);
  });
}

// ---------------------------------------------------------------------------------------------
// The small elementwise steps of a decode step, one call each instead of five to ten torch ops:
// at batch 1 their dispatch overhead, not their arithmetic, is what they cost.

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& w, double eps) {
  TORCH_CHECK(x.scalar_type() == at::kFloat && x.is_contiguous() && w.scalar_type() == at::kFloat &&
                  w.is_contiguous() && x.size(-1) == w.numel(),
              "herd::rms_norm: x and w must be contiguous float32 with x.size(-1) == w.numel()");
  const int64_t D = w.numel(), rows = x.numel() / D;
  at::Tensor out = at::empty_like(x);
  const float *xp = x.data_ptr<float>(), *wp = w.data_ptr<float>();
  float* o = out.data_ptr<float>();
  for (int64_t r = 0; r < rows; ++r) {
    const float* v = xp + r * D;
    float ss = 0;
    for (int64_t j = 0; j < D; ++j) ss += v[j] * v[j];
    const float inv = 1.0f / std::sqrt(ss / static_cast<float>(D) + static_cast<float>(eps));
    for (int64_t j = 0; j < D; ++j) o[r * D + j] = v[j] * inv * wp[j];
  }
  return out;
}

// (..., 2F) = [gate | up] -> (..., F) = silu(gate) * up
at::Tensor silu_mul(const at::Tensor& gu) {
  TORCH_CHECK(gu.scalar_type() == at::kFloat && gu.is_contiguous() && gu.size(-1) % 2 == 0,
              "herd::silu_mul: expects contiguous float32 with an even last dim");
  const int64_t F = gu.size(-1) / 2, rows = gu.numel() / (2 * F);
  std::vector<int64_t> shape(gu.sizes().begin(), gu.sizes().end());
  shape.back() = F;
  at::Tensor out = at::empty(shape, gu.options());
  const float* p = gu.data_ptr<float>();
  float* o = out.data_ptr<float>();
  for (int64_t r = 0; r < rows; ++r) silu_mul_row(p + r * 2 * F, p + r * 2 * F + F, o + r * F, F);
  return out;
}

// In place on the first `heads` heads of each token of qkv (B, T, C): rotate adjacent pairs
// (x[2i], x[2i+1]) by the angle whose cos/sin are given per token, (B, T, H/2).
void rope_(at::Tensor qkv, const at::Tensor& cos, const at::Tensor& sin, int64_t heads) {
  TORCH_CHECK(qkv.scalar_type() == at::kFloat && qkv.is_contiguous() && qkv.dim() == 3,
              "herd::rope_: qkv must be contiguous float32 (B, T, C)");
  TORCH_CHECK(cos.is_contiguous() && sin.is_contiguous() && cos.sizes() == sin.sizes() && cos.dim() == 3 &&
                  cos.size(0) == qkv.size(0) && cos.size(1) == qkv.size(1),
              "herd::rope_: cos and sin must be contiguous (B, T, H/2)");
  const int64_t tokens = qkv.size(0) * qkv.size(1), C = qkv.size(2), P = cos.size(2);
  TORCH_CHECK(heads * 2 * P <= C, "herd::rope_: ", heads, " heads of ", 2 * P, " do not fit in ", C, " features");
  float* x = qkv.data_ptr<float>();
  const float *c = cos.data_ptr<float>(), *s = sin.data_ptr<float>();
  for (int64_t t = 0; t < tokens; ++t)
    for (int64_t h = 0; h < heads; ++h) {
      float* v = x + t * C + h * 2 * P;
      for (int64_t i = 0; i < P; ++i) {
        const float x0 = v[2 * i], x1 = v[2 * i + 1], ci = c[t * P + i], si = s[t * P + i];
        v[2 * i] = x0 * ci - x1 * si;
        v[2 * i + 1] = x0 * si + x1 * ci;
      }
    }
}

// One decode step's attention, cache write included: k and v of the T new tokens (from qkv, after RoPE)
// go to slots pos..pos+T of the caches (B, K, S_max, H), then each query head attends to slots 0..pos+T.
// mask: bool, already expanded (strides may be 0) to (B, 1, T, pos+T), or undefined for causal over the
// new tokens. row_pos (B,) int64, instead of pos and mask: row b is at its own position (a server's
// requests started at different times), writes slots row_pos[b].. and attends causally to 0..row_pos[b]+t.
// Query head n reads kv head n / (N / K). Returns (B, T, N * H), the layout wo takes.
at::Tensor cache_attend(const at::Tensor& qkv, at::Tensor k_cache, at::Tensor v_cache, int64_t pos,
                        const c10::optional<at::Tensor>& mask, int64_t n_heads, int64_t n_kv_heads,
                        const c10::optional<at::Tensor>& row_pos) {
  TORCH_CHECK(qkv.scalar_type() == at::kFloat && qkv.is_contiguous() && qkv.dim() == 3,
              "herd::cache_attend: qkv must be contiguous float32 (B, T, C)");
  TORCH_CHECK(k_cache.is_contiguous() && v_cache.is_contiguous() && k_cache.scalar_type() == at::kFloat &&
                  k_cache.sizes() == v_cache.sizes() && k_cache.dim() == 4,
              "herd::cache_attend: caches must be contiguous float32 (B, K, S, H)");
  const int64_t B = qkv.size(0), T = qkv.size(1), C = qkv.size(2);
  const int64_t N = n_heads, K = n_kv_heads, H = k_cache.size(3), Smax = k_cache.size(2);
  TORCH_CHECK(C == (N + 2 * K) * H && k_cache.size(1) == K, "herd::cache_attend: qkv has ", C,
              " features, expected (", N, " + 2 * ", K, ") * ", H);
  const bool has_mask = mask.has_value() && mask->defined();
  std::vector<int64_t> start(B, pos);  // the slot of each row's first new token
  if (row_pos.has_value() && row_pos->defined()) {
    TORCH_CHECK(!has_mask && row_pos->scalar_type() == at::kLong && row_pos->numel() == B && row_pos->is_contiguous(),
                "herd::cache_attend: row_pos must be int64 (B,) and comes without a mask");
    std::copy(row_pos->data_ptr<int64_t>(), row_pos->data_ptr<int64_t>() + B, start.begin());
  }
  const int64_t S = *std::max_element(start.begin(), start.end()) + T;  // the longest row's keys
  TORCH_CHECK(k_cache.size(0) >= B && S <= Smax && *std::min_element(start.begin(), start.end()) >= 0,
              "KV cache holds batch ", k_cache.size(0), " x ", Smax, " tokens; got ", B, " x ", S);
  if (has_mask)
    TORCH_CHECK(mask->scalar_type() == at::kBool && mask->dim() == 4 && mask->size(0) == B && mask->size(2) == T &&
                    mask->size(3) == S,
                "herd::cache_attend: mask must be bool (B, 1, T, S) after expanding");
  const float* x = qkv.data_ptr<float>();
  float* kc = k_cache.data_ptr<float>();
  float* vc = v_cache.data_ptr<float>();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t)
      for (int64_t h = 0; h < K; ++h) {
        const float* src = x + (b * T + t) * C + (N + h) * H;
        std::memcpy(kc + ((b * K + h) * Smax + start[b] + t) * H, src, H * sizeof(float));
        std::memcpy(vc + ((b * K + h) * Smax + start[b] + t) * H, src + K * H, H * sizeof(float));
      }
  at::Tensor out = at::empty({B, T, N * H}, qkv.options());
  float* o = out.data_ptr<float>();
  const bool* mp = has_mask ? mask->data_ptr<bool>() : nullptr;
  const auto ms = has_mask ? mask->strides() : at::IntArrayRef();
  const float scale = 1.0f / std::sqrt(static_cast<float>(H));
  const int64_t G = N / K;
  auto work = [&](int64_t i0, int64_t i1) {
    std::vector<float> p(S);
    for (int64_t i = i0; i < i1; ++i) {  // i = (b, n, t)
      const int64_t b = i / (N * T), n = (i / T) % N, t = i % T;
      const float* q = x + (b * T + t) * C + n * H;
      const float* kb = kc + (b * K + n / G) * Smax * H;
      const float* vb = vc + (b * K + n / G) * Smax * H;
      const int64_t Sb = start[b] + T;
      float best = -INFINITY;
      for (int64_t j = 0; j < Sb; ++j) {
        const bool ok = has_mask ? mp[b * ms[0] + t * ms[2] + j * ms[3]] : j <= start[b] + t;
        if (!ok) {
          p[j] = -INFINITY;
          continue;
        }
        p[j] = dot(q, kb + j * H, H) * scale;
        best = std::max(best, p[j]);
      }
      float* y = o + (b * T + t) * N * H + n * H;
      if (best == -INFINITY) {  // every key masked: zeros
        std::fill(y, y + H, 0.0f);
        continue;
      }
      const float total = softmax_weights(p.data(), Sb, best);
      weighted_rows(p.data(), vb, Sb, H, y);
      const float inv = total > 0 ? 1.0f / total : 0.0f;
      for (int64_t e = 0; e < H; ++e) y[e] *= inv;
    }
  };
  const int64_t rows = B * N * T;
  // Threads only when there is enough work to pay for waking them.
  if (rows > 1 && rows * S * H >= (1 << 16))
    at::parallel_for(0, rows, 1, work);
  else
    work(0, rows);
  return out;
}

// ---------------------------------------------------------------------------------------------
// A whole transformer block for a decode step in one call. Each weight comes as its tensors: [w] (float32 or
// bfloat16), [qweight, scales] (int8) or [qweight, scales, mins] (int4). At batch 1 the Python and dispatch
// cost of the dozen calls above is comparable to the block's arithmetic; one call removes it.

at::Tensor linear_any(const at::Tensor& x, const std::vector<at::Tensor>& w) {
  const int64_t K = x.size(-1);
  at::Tensor x2 = x.reshape({-1, K});
  at::Tensor y;
  if (w.size() == 1)
    y = linear_dense(x2, w[0]);
  else if (w.size() == 2)
    y = linear_int8(x2, w[0], w[1]);
  else
    y = linear_int4(x2, w[0], w[1], w[2]);
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = y.size(1);
  return y.view(shape);
}

at::Tensor decode_block(const at::Tensor& h, const at::Tensor& attention_norm, const at::Tensor& ffn_norm, double eps,
                        std::vector<at::Tensor> wqkv, std::vector<at::Tensor> wo, std::vector<at::Tensor> w13,
                        std::vector<at::Tensor> w2, const at::Tensor& cos, const at::Tensor& sin, at::Tensor k_cache,
                        at::Tensor v_cache, int64_t pos, const c10::optional<at::Tensor>& mask, int64_t n_heads,
                        int64_t n_kv_heads, const c10::optional<at::Tensor>& row_pos) {
  at::Tensor qkv = linear_any(rms_norm(h, attention_norm, eps), wqkv);
  rope_(qkv, cos, sin, n_heads + n_kv_heads);
  at::Tensor attn = cache_attend(qkv, k_cache, v_cache, pos, mask, n_heads, n_kv_heads, row_pos);
  at::Tensor h2 = h + linear_any(attn, wo);
  return h2 + linear_any(silu_mul(linear_any(rms_norm(h2, ffn_norm, eps), w13)), w2);
}

// Rows n0..n1 of a packed weight as float32 (n1 - n0, K): the large-batch and prefill path converts a block of rows
// at a time and hands it to torch's GEMM. int8 when mins is undefined, int4 otherwise.
at::Tensor dequantize_rows(const at::Tensor& q, const at::Tensor& scales, const c10::optional<at::Tensor>& mins,
                           int64_t n0, int64_t n1) {
  const bool int4 = mins.has_value() && mins->defined();
  if (is_tiled(q, "herd::dequantize_rows")) {
#ifdef HERD_VNNI
    const int64_t N = q.size(0) * kTile, K = q.size(1) * kGroup;
    TORCH_CHECK(0 <= n0 && n0 <= n1 && n1 <= N, "herd::dequantize_rows: rows ", n0, "..", n1, " of ", N);
    check_tiled(q, scales, mins, K, "herd::dequantize_rows");
    at::Tensor out = at::empty({n1 - n0, K}, scales.options().dtype(at::kFloat));
    float* o = out.data_ptr<float>();
    at::parallel_for(n0, n1, 16, [&](int64_t a, int64_t b) {
      for (int64_t n = a; n < b; ++n) dequantize_tiled_row(q, scales, mins, n, o + (n - n0) * K);
    });
    return out;
#endif
  }
  const int64_t N = q.size(0), K = int4 ? q.size(1) * 2 : q.size(1), G = K / kGroup;
  TORCH_CHECK(0 <= n0 && n0 <= n1 && n1 <= N, "herd::dequantize_rows: rows ", n0, "..", n1, " of ", N);
  check_groups(scales, N, G, "herd::dequantize_rows: scales");
  if (int4) check_groups(*mins, N, G, "herd::dequantize_rows: mins");
  at::Tensor out = at::empty({n1 - n0, K}, scales.options().dtype(at::kFloat));
  float* o = out.data_ptr<float>();
  const uint16_t* sp = reinterpret_cast<const uint16_t*>(scales.data_ptr<at::Half>());
  const uint16_t* mp = int4 ? reinterpret_cast<const uint16_t*>(mins->data_ptr<at::Half>()) : nullptr;
  at::parallel_for(n0, n1, 16, [&](int64_t a, int64_t b) {
    for (int64_t n = a; n < b; ++n) {
      float* row = o + (n - n0) * K;
      for (int64_t g = 0; g < G; ++g) {
        const float d = half_to_float(sp[n * G + g]);
        if (int4) {
          const float m = half_to_float(mp[n * G + g]);
          const uint8_t* b8 = q.data_ptr<uint8_t>() + n * K / 2 + g * kGroup / 2;
          for (int64_t j = 0; j < kGroup / 2; ++j) {
            row[g * kGroup + j] = (b8[j] & 0xF) * d + m;
            row[g * kGroup + kGroup / 2 + j] = (b8[j] >> 4) * d + m;
          }
        } else {
          const int8_t* b8 = q.data_ptr<int8_t>() + n * K + g * kGroup;
          for (int64_t j = 0; j < kGroup; ++j) row[g * kGroup + j] = b8[j] * d;
        }
      }
    }
  });
  return out;
}

}  // namespace

// Whether bfloat16 weights multiply x rounded to bfloat16 (the AVX512-BF16 build) rather than float32 x.
bool bf16_activations() {
#ifdef HERD_BF16
  return true;
#else
  return false;
#endif
}

// Whether linear_int8/linear_int4 take weights in the tiled layout (the AVX512-VNNI build).
bool tile_kernels() {
#ifdef HERD_VNNI
  return true;
#else
  return false;
#endif
}

TORCH_LIBRARY(herd, m) {
  m.def("bf16_activations() -> bool");
  m.def("tile_kernels() -> bool");
  m.def("linear_dense(Tensor x, Tensor w) -> Tensor");
  m.def("linear_int8(Tensor x, Tensor qweight, Tensor scales) -> Tensor");
  m.def("linear_int4(Tensor x, Tensor qweight, Tensor scales, Tensor mins) -> Tensor");
  m.def("rms_norm(Tensor x, Tensor w, float eps) -> Tensor");
  m.def("silu_mul(Tensor gu) -> Tensor");
  m.def("rope_(Tensor(a!) qkv, Tensor cos, Tensor sin, int heads) -> ()");
  m.def(
      "decode_block(Tensor h, Tensor attention_norm, Tensor ffn_norm, float eps, Tensor[] wqkv, Tensor[] wo, "
      "Tensor[] w13, Tensor[] w2, Tensor cos, Tensor sin, Tensor(a!) k_cache, Tensor(b!) v_cache, int pos, "
      "Tensor? mask, int n_heads, int n_kv_heads, Tensor? row_pos=None) -> Tensor");
  m.def("dequantize_rows(Tensor qweight, Tensor scales, Tensor? mins, int n0, int n1) -> Tensor");
  m.def(
      "cache_attend(Tensor qkv, Tensor(a!) k_cache, Tensor(b!) v_cache, int pos, Tensor? mask, int n_heads, "
      "int n_kv_heads, Tensor? row_pos=None) -> Tensor");
}

TORCH_LIBRARY_IMPL(herd, CatchAll, m) {
  m.impl("bf16_activations", &bf16_activations);
  m.impl("tile_kernels", &tile_kernels);
}

TORCH_LIBRARY_IMPL(herd, CPU, m) {
  m.impl("linear_dense", &linear_dense);
  m.impl("linear_int8", &linear_int8);
  m.impl("linear_int4", &linear_int4);
  m.impl("rms_norm", &rms_norm);
  m.impl("silu_mul", &silu_mul);
  m.impl("rope_", &rope_);
  m.impl("cache_attend", &cache_attend);
  m.impl("decode_block", &decode_block);
  m.impl("dequantize_rows", &dequantize_rows);
}
