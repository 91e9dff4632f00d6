// int8/int4 weight-only linear layers on AVX512-VNNI for weights in herd's tiled layout (TiledWeight in
// herd/inference/quantize.py): y (M, N) = x (M, K) @ W (N, K)^T.
//
// The tiled layout stores W in tiles of 16 rows. Within a tile and a group of 32 inputs, 64-byte vector c holds
// inputs 4c..4c+3 of all 16 rows (row r in dword lane r), so one dpbusd against 4 bytes of x broadcast to every
// lane adds 4 products into each row's own int32 lane:
//   int8: (N/16, G, 512) uint8; byte 64c + 4r + b = w[16t + r][32g + 4c + b] + 128 (dpbusd's unsigned operand)
//   int4: (N/16, G, 256) uint8; byte 64c + 4r + b = packed byte 4c + b of row 16t + r's group g, whose low nibbles
//         are values 4c.. and high nibbles values 16 + 4c.. (GGUF's order, as in herd/formats/packed.py)
//   scales (and int4 mins): (N/16, G, 16) float16
// Each lane is one output, so there are no horizontal sums, and the per-group float work (convert, scale, add) is one
// instruction per 16 outputs. Rows of x reuse each loaded weight vector. A 512-bit dpbusd holds a whole tile's 16
// lanes; on the Zen 4 this was tuned on, 512-bit dpbusd issued about as often per second as the 256-bit form, so
// it does more products per second (a development micro-loop, not committed).
//
// Every output comes from the same instructions in the same order whatever M is (groups in order, one float
// accumulator per output), so a request's logits are bit-identical alone or batched.
//
// Included by linear.cpp inside its anonymous namespace (after kGroup and QuantizedX) when HERD_VNNI is set.

constexpr int64_t kTile = 16;  // weight rows per tile: one int32 / float32 lane each of a 512-bit vector

// The 4 bytes at p in every lane; the compiler folds it into dpbusd's broadcast memory operand.
inline __m512i broadcast4(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm512_set1_epi32(v);
}

inline __m512 load_halves(const at::Half* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}

// The weights stream from memory once per call, and the hardware prefetcher alone does not keep far enough ahead of
// the dot products: in an A/B over 30 layers of SmolLM2-shaped int4 weights on the Zen 4 of
// benchmarks/results/generate.json, requesting the lines 4 KB ahead made batch-1 and batch-8 calls faster (distances
// of 1-16 KB all helped; 4 KB was the most consistent). A prefetch past the weights' end is harmless.
constexpr int64_t kPrefetchBytes = 4096;

inline void prefetch_ahead(const uint8_t* p, int lines) {
  for (int c = 0; c < lines; ++c) _mm_prefetch(reinterpret_cast<const char*>(p + kPrefetchBytes + 64 * c), _MM_HINT_T0);
}

// x quantized per group of 32 (linear.cpp's quantize_x): values (M, K), scales xd (M, G), and per group the integer
// sum of the values (xt) and xd times it (xs).
struct TileX {
  const int8_t* xq;
  const float* xd;
  const int32_t* xt;
  const float* xs;
};

// One tile of int8 weights (q: its (G, 512) bytes, sc: its (G, 16) scales) against rows m0..m0+MB of x; writes
// out[i * ldo + 0..16]. The weights are stored + 128, so 128 * sum(x) comes off each group's integer sum.
template <int MB>
void q8_tile(const uint8_t* q, const at::Half* sc, const TileX& x, int64_t K, int64_t m0, float* out, int64_t ldo) {
  const int64_t G = K / kGroup;
  __m512 acc[MB];
  for (int i = 0; i < MB; ++i) acc[i] = _mm512_setzero_ps();
  for (int64_t g = 0; g < G; ++g) {
    prefetch_ahead(q + g * 512, 8);
    __m512i w[8];
    for (int c = 0; c < 8; ++c) w[c] = _mm512_loadu_si512(q + g * 512 + 64 * c);
    const __m512 s = load_halves(sc + g * kTile);
    for (int i = 0; i < MB; ++i) {
      const int64_t at = (m0 + i) * G + g;
      const int8_t* xg = x.xq + (m0 + i) * K + g * kGroup;
      __m512i d0 = _mm512_setzero_si512(), d1 = _mm512_setzero_si512();  // two chains: dpbusd's latency
      for (int c = 0; c < 8; c += 2) {
        d0 = _mm512_dpbusd_epi32(d0, w[c], broadcast4(xg + 4 * c));
        d1 = _mm512_dpbusd_epi32(d1, w[c + 1], broadcast4(xg + 4 * c + 4));
      }
      const __m512i d = _mm512_sub_epi32(_mm512_add_epi32(d0, d1), _mm512_set1_epi32(128 * x.xt[at]));
      acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), _mm512_mul_ps(s, _mm512_set1_ps(x.xd[at])), acc[i]);
    }
  }
  for (int i = 0; i < MB; ++i) _mm512_storeu_ps(out + i * ldo, acc[i]);
}

// One tile of int4 weights ((G, 256) bytes, scales and mins (G, 16)): each 64-byte vector gives two (low and high
// nibbles); the min term adds min * sum(x) per group.
template <int MB>
void q4_tile(const uint8_t* q, const at::Half* sc, const at::Half* mn, const TileX& x, int64_t K, int64_t m0,
             float* out, int64_t ldo) {
  const int64_t G = K / kGroup;
  const __m512i low4 = _mm512_set1_epi8(0x0F);
  __m512 acc[MB], accm[MB];
  for (int i = 0; i < MB; ++i) acc[i] = accm[i] = _mm512_setzero_ps();
  for (int64_t g = 0; g < G; ++g) {
    __m512i lo[4], hi[4];
    prefetch_ahead(q + g * 256, 4);
    for (int c = 0; c < 4; ++c) {
      const __m512i b = _mm512_loadu_si512(q + g * 256 + 64 * c);
      lo[c] = _mm512_and_si512(b, low4);
      hi[c] = _mm512_and_si512(_mm512_srli_epi16(b, 4), low4);
    }
    const __m512 s = load_halves(sc + g * kTile), m = load_halves(mn + g * kTile);
    for (int i = 0; i < MB; ++i) {
      const int64_t at = (m0 + i) * G + g;
      const int8_t* xg = x.xq + (m0 + i) * K + g * kGroup;
      __m512i d0 = _mm512_setzero_si512(), d1 = _mm512_setzero_si512();
      for (int c = 0; c < 4; ++c) {
        d0 = _mm512_dpbusd_epi32(d0, lo[c], broadcast4(xg + 4 * c));
        d1 = _mm512_dpbusd_epi32(d1, hi[c], broadcast4(xg + 16 + 4 * c));
      }
      const __m512i d = _mm512_add_epi32(d0, d1);
      acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), _mm512_mul_ps(s, _mm512_set1_ps(x.xd[at])), acc[i]);
      accm[i] = _mm512_fmadd_ps(m, _mm512_set1_ps(x.xs[at]), accm[i]);
    }
  }
  for (int i = 0; i < MB; ++i) _mm512_storeu_ps(out + i * ldo, _mm512_add_ps(acc[i], accm[i]));
}

// y for a tiled weight: tiles split across threads, rows of x in blocks of up to 8 (accumulators in registers).
// tile(mb, t, m0, out) computes tile t for rows m0..m0+mb.
template <typename TileFn>
at::Tensor run_tiles(const at::Tensor& x, int64_t tiles, int64_t tile_bytes, TileFn tile) {
  const int64_t M = x.size(0), N = tiles * kTile;
  at::Tensor out = at::empty({M, N}, x.options());
  float* o = out.data_ptr<float>();
  // Enough tiles per task that a thread streams at least ~64 KB of weights.
  const int64_t grain = std::max<int64_t>(1, (64 << 10) / std::max<int64_t>(1, tile_bytes));
  at::parallel_for(0, tiles, grain, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t)
      for (int64_t m0 = 0; m0 < M; m0 += 8) {
        float* ot = o + m0 * N + t * kTile;
        switch (std::min<int64_t>(8, M - m0)) {
          case 1: tile(std::integral_constant<int, 1>{}, t, m0, ot); break;
          case 2: tile(std::integral_constant<int, 2>{}, t, m0, ot); break;
          case 3: tile(std::integral_constant<int, 3>{}, t, m0, ot); break;
          case 4: tile(std::integral_constant<int, 4>{}, t, m0, ot); break;
          case 5: tile(std::integral_constant<int, 5>{}, t, m0, ot); break;
          case 6: tile(std::integral_constant<int, 6>{}, t, m0, ot); break;
          case 7: tile(std::integral_constant<int, 7>{}, t, m0, ot); break;
          default: tile(std::integral_constant<int, 8>{}, t, m0, ot);
        }
      }
  });
  return out;
}

void check_tiled(const at::Tensor& q, const at::Tensor& scales, const c10::optional<at::Tensor>& mins, int64_t K,
                 const char* op) {
  const bool int4 = mins.has_value() && mins->defined();
  const int64_t T = q.size(0), G = K / kGroup;
  TORCH_CHECK(q.scalar_type() == at::kByte && q.is_contiguous() && q.size(1) == G && q.size(2) == (int4 ? 256 : 512),
              op, ": a tiled ", int4 ? "int4" : "int8", " qweight must be contiguous uint8 (", T, ", ", G, ", ",
              int4 ? 256 : 512, ")");
  for (const at::Tensor* t : {&scales, int4 ? &*mins : &scales})
    TORCH_CHECK(t->dim() == 3 && t->size(0) == T && t->size(1) == G && t->size(2) == kTile &&
                    t->scalar_type() == at::kHalf && t->is_contiguous(),
                op, ": tiled scales and mins must be contiguous float16 (", T, ", ", G, ", ", kTile, ")");
}

at::Tensor linear_tiled(const at::Tensor& x, const at::Tensor& q, const at::Tensor& scales,
                        const c10::optional<at::Tensor>& mins, const char* op) {
  const bool int4 = mins.has_value() && mins->defined();
  const int64_t K = q.size(1) * kGroup, G = q.size(1), tiles = q.size(0);
  check_x(x, K, op);
  check_tiled(q, scales, mins, K, op);
  const QuantizedX qx = quantize_x(x);
  const TileX tx{qx.xq.data_ptr<int8_t>(), qx.xd.data_ptr<float>(), qx.xtotal.data_ptr<int32_t>(),
                 qx.xsum.data_ptr<float>()};
  const uint8_t* qp = q.data_ptr<uint8_t>();
  const at::Half* sp = scales.data_ptr<at::Half>();
  const int64_t N = tiles * kTile, tile_bytes = q.size(1) * q.size(2);
  if (!int4)
    return run_tiles(x, tiles, tile_bytes, [&](auto mb, int64_t t, int64_t m0, float* o) {
      q8_tile<decltype(mb)::value>(qp + t * tile_bytes, sp + t * G * kTile, tx, K, m0, o, N);
    });
  const at::Half* mp = mins->data_ptr<at::Half>();
  return run_tiles(x, tiles, tile_bytes, [&](auto mb, int64_t t, int64_t m0, float* o) {
    q4_tile<decltype(mb)::value>(qp + t * tile_bytes, sp + t * G * kTile, mp + t * G * kTile, tx, K, m0, o, N);
  });
}

// Row n of a tiled weight as float32 (K values at out): the prefill path's dequantization.
void dequantize_tiled_row(const at::Tensor& q, const at::Tensor& scales, const c10::optional<at::Tensor>& mins,
                          int64_t n, float* out) {
  const bool int4 = mins.has_value() && mins->defined();
  const int64_t G = q.size(1), t = n / kTile, r = n % kTile, bytes = q.size(2);
  const uint8_t* qt = q.data_ptr<uint8_t>() + t * G * bytes;
  const at::Half* st = scales.data_ptr<at::Half>() + t * G * kTile;
  const at::Half* mt = int4 ? mins->data_ptr<at::Half>() + t * G * kTile : nullptr;
  for (int64_t g = 0; g < G; ++g) {
    const float d = st[g * kTile + r];
    float* row = out + g * kGroup;
    if (int4) {
      const float m = mt[g * kTile + r];
      for (int64_t j = 0; j < kGroup / 2; ++j) {
        const uint8_t b = qt[g * bytes + 64 * (j / 4) + 4 * r + j % 4];
        row[j] = (b & 0xF) * d + m;
        row[kGroup / 2 + j] = (b >> 4) * d + m;
      }
    } else {
      for (int64_t j = 0; j < kGroup; ++j) row[j] = (qt[g * bytes + 64 * (j / 4) + 4 * r + j % 4] - 128) * d;
    }
  }
}
