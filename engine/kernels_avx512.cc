#include "engine/kernels_avx512.h"

// GCC 12 flags the deliberately undefined registers inside its own AVX-512
// reduction intrinsics (_mm512_reduce_add_ps); the warning is spurious.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <iterator>
#include <type_traits>
#include <vector>

#include "engine/dtype.h"
#include "engine/exp_polynomial.h"

#define BATON_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl")))

namespace baton::kernels::avx512 {
namespace {

// Lanes for the `left` columns still to do, at most 16.
inline __mmask16 ColumnMask(int64_t left) {
  return left >= 16 ? 0xffff : left <= 0 ? 0 : static_cast<__mmask16>((1u << left) - 1);
}

BATON_AVX512 inline __m512 LoadWeights(const float* p, __mmask16 mask) {
  return _mm512_maskz_loadu_ps(mask, p);
}

// bf16 -> f32 is exact: the bf16 bits are the high half of the float.
BATON_AVX512 inline __m512 LoadWeights(const uint16_t* p, __mmask16 mask) {
  const __m256i raw = _mm256_maskz_loadu_epi16(mask, p);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
}

// A register tile: R weight rows times T activation rows, 16 columns at a
// time, R*T accumulators. Each weight vector loaded feeds T FMAs.
template <int R, int T, typename W>
BATON_AVX512 void Tile(const float* x, int64_t ldx, int64_t k, const W* w, float* y, int64_t ldy) {
  __m512 acc[R][T];
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) acc[r][t] = _mm512_setzero_ps();
  for (int64_t c = 0; c < k; c += 16) {
    const __mmask16 mask = k - c >= 16 ? 0xffff : static_cast<__mmask16>((1u << (k - c)) - 1);
    __m512 xv[T];
    for (int t = 0; t < T; ++t) xv[t] = _mm512_maskz_loadu_ps(mask, x + t * ldx + c);
    for (int r = 0; r < R; ++r) {
      const __m512 wv = LoadWeights(w + r * k + c, mask);
      for (int t = 0; t < T; ++t) acc[r][t] = _mm512_fmadd_ps(wv, xv[t], acc[r][t]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) y[t * ldy + r] = _mm512_reduce_add_ps(acc[r][t]);
}

template <int R, typename W>
BATON_AVX512 void TileRows(const float* x, int64_t ldx, int64_t m, int64_t k, const W* w, float* y,
                           int64_t ldy) {
  int64_t i = 0;
  for (; i + 4 <= m; i += 4) Tile<R, 4>(x + i * ldx, ldx, k, w, y + i * ldy, ldy);
  switch (m - i) {
    case 3:
      Tile<R, 3>(x + i * ldx, ldx, k, w, y + i * ldy, ldy);
      break;
    case 2:
      Tile<R, 2>(x + i * ldx, ldx, k, w, y + i * ldy, ldy);
      break;
    case 1:
      Tile<R, 1>(x + i * ldx, ldx, k, w, y + i * ldy, ldy);
      break;
    default:
      break;
  }
}

template <typename W>
BATON_AVX512 void MatMulRowsTyped(const float* x, int64_t ldx, int64_t m, int64_t k, const W* w,
                                  int64_t row_begin, int64_t row_end, float* y, int64_t ldy) {
  int64_t j = row_begin;
  for (; j + 4 <= row_end; j += 4) TileRows<4>(x, ldx, m, k, w + j * k, y + (j - row_begin), ldy);
  for (; j < row_end; ++j) TileRows<1>(x, ldx, m, k, w + j * k, y + (j - row_begin), ldy);
}

// A panel is one sequential stream, and one stream per core leaves memory
// idle between the hardware prefetcher's requests on some CPUs (measured on
// a 2-core Xeon VM: 15 GB/s of its 30); asking for the slice kPrefetchBytes
// ahead keeps enough lines in flight.
constexpr int64_t kPrefetchBytes = 4096;
template <typename W>
BATON_AVX512 inline void PrefetchAhead(const W* slice) {
  const char* ahead = reinterpret_cast<const char*>(slice) + kPrefetchBytes;
  for (size_t line = 0; line < 4 * kPanelCols * sizeof(W); line += 64) {
    _mm_prefetch(ahead + line, _MM_HINT_T0);
  }
}

// Tile<4, T> over one panel (kPanelRows rows, padded columns): the same
// multiply-adds in the same order, so results equal the row-major tile's bit
// for bit; only the addresses differ. Stores the first `rows` rows.
template <int T, typename W>
BATON_AVX512 void PanelTile(const float* x, int64_t ldx, int64_t k, const W* panel, int rows,
                            float* y, int64_t ldy) {
  __m512 acc[4][T];
  for (int r = 0; r < 4; ++r)
    for (int t = 0; t < T; ++t) acc[r][t] = _mm512_setzero_ps();
  // One 32-column slice (4 rows x 32) per iteration, as two 16-column halves.
  const W* p = panel;
  for (int64_t c = 0; c < k; c += kPanelCols, p += 4 * kPanelCols) {
    PrefetchAhead(p);
    for (int half = 0; half < 2; ++half) {
      const int64_t ch = c + 16 * half;
      if (ch >= k) break;
      const __mmask16 mask = k - ch >= 16 ? 0xffff : static_cast<__mmask16>((1u << (k - ch)) - 1);
      __m512 xv[T];
      for (int t = 0; t < T; ++t) xv[t] = _mm512_maskz_loadu_ps(mask, x + t * ldx + ch);
      for (int r = 0; r < 4; ++r) {
        // Padding is zero.
        const __m512 wv = LoadWeights(p + kPanelCols * r + 16 * half, 0xffff);
        for (int t = 0; t < T; ++t) acc[r][t] = _mm512_fmadd_ps(wv, xv[t], acc[r][t]);
      }
    }
  }
  // Reduce with constant indices only: a runtime index into acc would make
  // GCC keep the accumulators in memory, storing them every iteration.
  float sums[4][T];
  for (int r = 0; r < 4; ++r)
    for (int t = 0; t < T; ++t) sums[r][t] = _mm512_reduce_add_ps(acc[r][t]);
  for (int r = 0; r < rows; ++r)
    for (int t = 0; t < T; ++t) y[t * ldy + r] = sums[r][t];
}

// Calls tile(tokens, j, i, rows) for every 4-row panel j of [row_begin,
// row_end) (`rows` of them real) and every group of tokens from i, `tokens`
// (an integral_constant: 4, 3, 2 or 1) at a time: the loops the fp32 and the
// BF16 panel products share.
template <typename TileFn>
BATON_AVX512 inline void ForEachPanelTile(int64_t m, int64_t row_begin, int64_t row_end,
                                          TileFn&& tile) {
  for (int64_t j = row_begin; j < row_end; j += 4) {
    const int rows = static_cast<int>(std::min<int64_t>(4, row_end - j));
    int64_t i = 0;
    for (; i + 4 <= m; i += 4) tile(std::integral_constant<int, 4>(), j, i, rows);
    switch (m - i) {
      case 3:
        tile(std::integral_constant<int, 3>(), j, i, rows);
        break;
      case 2:
        tile(std::integral_constant<int, 2>(), j, i, rows);
        break;
      case 1:
        tile(std::integral_constant<int, 1>(), j, i, rows);
        break;
      default:
        break;
    }
  }
}

template <typename W>
BATON_AVX512 void MatMulPanels(const float* x, int64_t ldx, int64_t m, const Matrix& w,
                               const W* data, int64_t row_begin, int64_t row_end, float* y,
                               int64_t ldy) {
  const int64_t k = w.cols, stride = 4 * w.padded_cols();
  ForEachPanelTile(m, row_begin, row_end,
                   [&](auto tokens, int64_t j, int64_t i, int rows) BATON_AVX512 {
                     PanelTile<decltype(tokens)::value>(x + i * ldx, ldx, k, data + j / 4 * stride,
                                                        rows, y + (j - row_begin) + i * ldy, ldy);
                   });
}

}  // namespace

BATON_AVX512 void MatMulRows(const float* x, int64_t ldx, int64_t m, const Matrix& w,
                             int64_t row_begin, int64_t row_end, float* y, int64_t ldy) {
  auto run = [&](const auto* data) BATON_AVX512 {
    if (w.panels) {
      MatMulPanels(x, ldx, m, w, data, row_begin, row_end, y, ldy);
    } else {
      MatMulRowsTyped(x, ldx, m, w.cols, data, row_begin, row_end, y, ldy);
    }
  };
  if (w.dtype == DType::kF32) {
    run(w.f32());
  } else {
    run(w.bf16());
  }
}

BATON_AVX512 float Dot(const float* a, const float* b, int64_t n) {
  __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc0);
    acc1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), acc1);
  }
  for (; i < n; i += 16) {
    const __mmask16 mask = n - i >= 16 ? 0xffff : static_cast<__mmask16>((1u << (n - i)) - 1);
    acc0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mask, a + i), _mm512_maskz_loadu_ps(mask, b + i),
                           acc0);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
}

namespace {

// e^x for x <= 0 (engine/exp_polynomial.h); a NaN stays NaN (MAXPS returns
// its second operand when either is NaN).
BATON_AVX512 inline __m512 ExpNonPositive(__m512 x) {
  x = _mm512_max_ps(_mm512_set1_ps(kExpMinArgument), x);
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(kLog2E)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2High), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Low), r);
  __m512 p = _mm512_set1_ps(kExpTaylor[0]);
  for (size_t i = 1; i < std::size(kExpTaylor); ++i) {
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kExpTaylor[i]));
  }
  return _mm512_scalef_ps(p, n);
}

}  // namespace

BATON_AVX512 void ExpAndSum(float* x, int64_t n, float* max_out, float* sum_out) {
  __m512 max = _mm512_set1_ps(-INFINITY);
  for (int64_t i = 0; i < n; i += 16) {
    max = _mm512_max_ps(max, _mm512_mask_loadu_ps(max, ColumnMask(n - i), x + i));
  }
  *max_out = _mm512_reduce_max_ps(max);
  const __m512 top = _mm512_set1_ps(*max_out);
  __m512 sum = _mm512_setzero_ps();
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 mask = ColumnMask(n - i);
    const __m512 e = ExpNonPositive(_mm512_sub_ps(_mm512_maskz_loadu_ps(mask, x + i), top));
    _mm512_mask_storeu_ps(x + i, mask, e);
    sum = _mm512_mask_add_ps(sum, mask, sum, e);
  }
  *sum_out = _mm512_reduce_add_ps(sum);
}

BATON_AVX512 void Softmax(float* x, int64_t n) {
  float max, sum;
  ExpAndSum(x, n, &max, &sum);
  const __m512 inv = _mm512_set1_ps(1.0f / sum);
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 mask = ColumnMask(n - i);
    _mm512_mask_storeu_ps(x + i, mask, _mm512_mul_ps(_mm512_maskz_loadu_ps(mask, x + i), inv));
  }
}

BATON_AVX512 void Axpy(float a, const float* x, float* y, int64_t n) {
  const __m512 av = _mm512_set1_ps(a);
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 mask = n - i >= 16 ? 0xffff : static_cast<__mmask16>((1u << (n - i)) - 1);
    const __m512 yv = _mm512_maskz_loadu_ps(mask, y + i);
    _mm512_mask_storeu_ps(y + i, mask, _mm512_fmadd_ps(av, _mm512_maskz_loadu_ps(mask, x + i), yv));
  }
}

#define BATON_AVX512_BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))

namespace {

// The BF16 counterpart of PanelTile: each instruction multiplies 16 pairs of
// adjacent columns and adds both products to a float lane, so one 32-column
// slice of a row is one instruction per token. Per (row, token) the order of
// operations never depends on T, so batching stays invisible.
template <int T>
BATON_AVX512_BF16 void PanelTileBf16(const uint16_t* xb, int64_t ldxb, int64_t padded,
                                     const uint16_t* panel, int rows, float* y, int64_t ldy) {
  __m512 acc[4][T];
  for (int r = 0; r < 4; ++r)
    for (int t = 0; t < T; ++t) acc[r][t] = _mm512_setzero_ps();
  for (int64_t c = 0; c < padded; c += kPanelCols, panel += 4 * kPanelCols) {
    PrefetchAhead(panel);
    __m512bh xv[T];
    for (int t = 0; t < T; ++t) xv[t] = (__m512bh)_mm512_loadu_si512(xb + t * ldxb + c);
    for (int r = 0; r < 4; ++r) {
      const __m512bh wv = (__m512bh)_mm512_loadu_si512(panel + kPanelCols * r);
      for (int t = 0; t < T; ++t) acc[r][t] = _mm512_dpbf16_ps(acc[r][t], wv, xv[t]);
    }
  }
  float sums[4][T];
  for (int r = 0; r < 4; ++r)
    for (int t = 0; t < T; ++t) sums[r][t] = _mm512_reduce_add_ps(acc[r][t]);
  for (int r = 0; r < rows; ++r)
    for (int t = 0; t < T; ++t) y[t * ldy + r] = sums[r][t];
}

}  // namespace

BATON_AVX512_BF16 void MatMulRowsBf16(const uint16_t* xb, int64_t ldxb, int64_t m, const Matrix& w,
                                      int64_t row_begin, int64_t row_end, float* y, int64_t ldy) {
  const int64_t padded = w.padded_cols(), stride = 4 * padded;
  ForEachPanelTile(m, row_begin, row_end,
                   [&](auto tokens, int64_t j, int64_t i, int rows) BATON_AVX512_BF16 {
                     PanelTileBf16<decltype(tokens)::value>(xb + i * ldxb, ldxb, padded,
                                                            w.bf16() + j / 4 * stride, rows,
                                                            y + (j - row_begin) + i * ldy, ldy);
                   });
}

namespace {

constexpr int kHeadGroup = 8;  // Heads per register tile of the attention kernels.
// A cached MLA row of DeepSeek-V2 and V3: 512 latent + 64 RoPE elements.
constexpr int kMlaWidth = 576;

// Calls fn(h0, heads) for each group of up to kHeadGroup heads of [0, m):
// the group's first head and its size as an integral_constant, so that the
// tiles' loops unroll fully and their accumulators stay in registers.
template <typename Fn>
BATON_AVX512 inline void ForEachHeadGroup(int64_t m, Fn&& fn) {
  int64_t h0 = 0;
  for (; h0 + kHeadGroup <= m; h0 += kHeadGroup) fn(h0, std::integral_constant<int, kHeadGroup>());
  switch (m - h0) {
#define BATON_HEADS_CASE(n)                   \
  case n:                                     \
    fn(h0, std::integral_constant<int, n>()); \
    break;
    BATON_HEADS_CASE(1)
    BATON_HEADS_CASE(2)
    BATON_HEADS_CASE(3)
    BATON_HEADS_CASE(4)
    BATON_HEADS_CASE(5)
    BATON_HEADS_CASE(6)
    BATON_HEADS_CASE(7)
#undef BATON_HEADS_CASE
    default:
      break;
  }
}

// Lane a of the result is the sum of v[a]'s 16 lanes. Four rounds of
// shuffles and adds serve all 16 vectors at once (a reduction each would
// cost four times as many), and every vector's lanes are added in the same
// order whatever its neighbours hold, so a sum never depends on the tile.
BATON_AVX512 inline __m512 SumEachOfSixteen(const __m512 (&v)[16]) {
  __m512 r[8], s[4], u[2];
  for (int i = 0; i < 8; ++i) {  // 128-bit quarters: (0 + 2, 1 + 3).
    r[i] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                         _mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], _MM_SHUFFLE(3, 2, 3, 2)));
  }
  for (int i = 0; i < 4; ++i) {  // The two remaining quarters of each vector.
    s[i] = _mm512_add_ps(_mm512_shuffle_f32x4(r[2 * i], r[2 * i + 1], _MM_SHUFFLE(2, 0, 2, 0)),
                         _mm512_shuffle_f32x4(r[2 * i], r[2 * i + 1], _MM_SHUFFLE(3, 1, 3, 1)));
  }
  for (int i = 0; i < 2; ++i) {  // Lanes (0 + 2, 1 + 3) of each quarter.
    u[i] = _mm512_add_ps(_mm512_shuffle_ps(s[2 * i], s[2 * i + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                         _mm512_shuffle_ps(s[2 * i], s[2 * i + 1], _MM_SHUFFLE(3, 2, 3, 2)));
  }
  const __m512 w = _mm512_add_ps(_mm512_shuffle_ps(u[0], u[1], _MM_SHUFFLE(2, 0, 2, 0)),
                                 _mm512_shuffle_ps(u[0], u[1], _MM_SHUFFLE(3, 1, 3, 1)));
  // Lane 4q + l now holds vector q + 4l; put vector a in lane a.
  const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  return _mm512_permutexvar_ps(order, w);
}

// Scores of R consecutive rows (R = 1 or 2) against HB <= 8 heads: each row
// vector loaded (and widened from BF16) feeds HB FMAs, each query vector R;
// accumulator r * 8 + h, all reduced together. kWidth: the row width (and
// q's stride) when known at compile time, else 0.
template <int R, int HB, typename E, int kWidth = 0>
BATON_AVX512 void ScoreTile(const float* q, int64_t ldq, const E* rows, int64_t k, float* y,
                            int64_t ldy) {
  if constexpr (kWidth > 0) k = ldq = kWidth;
  __m512 acc[16];
  for (__m512& a : acc) a = _mm512_setzero_ps();
  // Whole vectors only, unmasked: a mask computed in every step cost a
  // third of the loop's instructions, and a second (masked) loop over the
  // same accumulators made GCC keep them in memory.
  const int64_t whole = k / 16 * 16;
  for (int64_t c = 0; c < whole; c += 16) {
    __m512 kv[R];
    for (int r = 0; r < R; ++r) kv[r] = LoadWeights(rows + r * k + c, 0xffff);
    for (int h = 0; h < HB; ++h) {
      __m512 qv = _mm512_loadu_ps(q + h * ldq + c);
      // One load for both rows: GCC would fold it into each FMA, loading
      // it R times, and the loads, not the FMAs, would set the pace.
      if constexpr (R > 1) asm("" : "+v"(qv));
      for (int r = 0; r < R; ++r) acc[r * 8 + h] = _mm512_fmadd_ps(kv[r], qv, acc[r * 8 + h]);
    }
  }
  alignas(64) float sums[16];
  _mm512_store_ps(sums, SumEachOfSixteen(acc));
  for (int r = 0; r < R; ++r) {
    for (int h = 0; h < HB; ++h) {
      float sum = sums[r * 8 + h];
      // The last k % 16 columns (none for DeepSeek's 576-wide rows).
      for (int64_t c = whole; c < k; ++c) {
        sum = std::fma(ElementToFloat(rows[r * k + c]), q[h * ldq + c], sum);
      }
      y[h * ldy + r] = sum;
    }
  }
}

template <typename E>
BATON_AVX512 void AttentionScoresTyped(const float* q, int64_t ldq, int64_t m, const E* rows,
                                       int64_t n, int64_t k, float* y, int64_t ldy) {
  ForEachHeadGroup(m, [&](int64_t h0, auto heads) BATON_AVX512 {
    constexpr int HB = decltype(heads)::value;
    int64_t j = 0;
    if (k == kMlaWidth && ldq == kMlaWidth) {
      // DeepSeek-V2/V3 rows: with the stride a constant, the eight query
      // rows are one pointer plus displacements, and the loop's addresses
      // no longer outnumber the registers (they were reloaded every step).
      for (; j + 2 <= n; j += 2) {
        ScoreTile<2, HB, E, kMlaWidth>(q + h0 * ldq, ldq, rows + j * k, k, y + h0 * ldy + j, ldy);
      }
    }
    for (; j + 2 <= n; j += 2) {
      ScoreTile<2, HB>(q + h0 * ldq, ldq, rows + j * k, k, y + h0 * ldy + j, ldy);
    }
    if (j < n) ScoreTile<1, HB>(q + h0 * ldq, ldq, rows + j * k, k, y + h0 * ldy + j, ldy);
  });
}

// out[h][c, c + 32) for HB <= 8 heads over all n rows, in row order: each
// row's two vectors feed 2 * HB FMAs against broadcast probabilities, read
// from pt[j][h] (the tile's probabilities transposed, so that one pointer
// reaches them all). The accumulators go through `out` between blocks: kept
// across the block loop, GCC stored all 16 of them to the stack after every
// row (a third of the speed); per block they stay in registers, and the sums
// are the same FMAs in the same order.
template <int HB, typename E>
BATON_AVX512 void SumTile(const float* pt, const E* const* blocks, int64_t block_rows, int64_t ldr,
                          int64_t n, int64_t c, int64_t k, float* out, int64_t ldo) {
  const __mmask16 m0 = ColumnMask(k - c), m1 = ColumnMask(k - c - 16);
  // Whole BF16 slices accumulate even and odd columns apart (the cheaper
  // widening), and are put back in order at the end: the same FMAs on the
  // same values, so the same sums.
  const bool split = std::is_same_v<E, uint16_t> && k - c >= 32;
  for (int64_t j0 = 0, b = 0; j0 < n; j0 += block_rows, ++b) {
    const E* row = blocks[b] + c;
    const int64_t rows = std::min(block_rows, n - j0);
    // The rows are a row length apart, too far for the hardware's stride
    // prefetcher: fetch the next block's while this one is summed.
    if (j0 + block_rows < n) {
      for (int64_t r = 0; r < std::min(block_rows, n - j0 - block_rows); ++r) {
        const char* next = reinterpret_cast<const char*>(blocks[b + 1] + c + r * ldr);
        _mm_prefetch(next, _MM_HINT_T0);
        if constexpr (sizeof(E) == 4) _mm_prefetch(next + 64, _MM_HINT_T0);
      }
    }
    __m512 lo[HB], hi[HB];
    for (int h = 0; h < HB; ++h) {
      lo[h] = j0 == 0 ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(m0, out + h * ldo + c);
      hi[h] = j0 == 0 ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(m1, out + h * ldo + c + 16);
    }
    for (int64_t j = j0; j < j0 + rows; ++j, row += ldr) {
      __m512 v0, v1;
      if (split) {
        // 32 BF16 columns in one load, widened in two instructions (not
        // four): the even columns by a shift, the odd ones by a mask.
        const __m512i x = _mm512_loadu_si512(row);
        v0 = _mm512_castsi512_ps(_mm512_slli_epi32(x, 16));
        v1 = _mm512_castsi512_ps(_mm512_and_si512(x, _mm512_set1_epi32(0xffff0000)));
      } else {
        v0 = LoadWeights(row, m0);
        v1 = LoadWeights(row + 16, m1);
      }
      for (int h = 0; h < HB; ++h) {
        const __m512 pv = _mm512_set1_ps(pt[j * HB + h]);
        lo[h] = _mm512_fmadd_ps(v0, pv, lo[h]);
        hi[h] = _mm512_fmadd_ps(v1, pv, hi[h]);
      }
    }
    for (int h = 0; h < HB; ++h) {
      _mm512_mask_storeu_ps(out + h * ldo + c, m0, lo[h]);
      _mm512_mask_storeu_ps(out + h * ldo + c + 16, m1, hi[h]);
    }
  }
  if (split) {
    const __m512i first = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    const __m512i second =
        _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    for (int h = 0; h < HB; ++h) {
      float* o = out + h * ldo + c;
      const __m512 even = _mm512_loadu_ps(o), odd = _mm512_loadu_ps(o + 16);
      _mm512_storeu_ps(o, _mm512_permutex2var_ps(even, first, odd));
      _mm512_storeu_ps(o + 16, _mm512_permutex2var_ps(even, second, odd));
    }
  }
}

template <typename E>
BATON_AVX512 void AttentionSumsTyped(const float* p, int64_t ldp, int64_t m, const E* const* blocks,
                                     int64_t block_rows, int64_t ldr, int64_t n, int64_t k,
                                     float* out, int64_t ldo) {
  thread_local std::vector<float> pt;  // Reused: this runs per piece and layer.
  pt.resize(n * kHeadGroup);
  ForEachHeadGroup(m, [&](int64_t h0, auto heads) BATON_AVX512 {
    constexpr int HB = decltype(heads)::value;
    for (int64_t j = 0; j < n; ++j)
      for (int h = 0; h < HB; ++h) pt[j * HB + h] = p[(h0 + h) * ldp + j];
    for (int64_t c = 0; c < k; c += 32) {
      SumTile<HB>(pt.data(), blocks, block_rows, ldr, n, c, k, out + h0 * ldo, ldo);
    }
  });
}

}  // namespace

BATON_AVX512 void AttentionScores(const float* q, int64_t ldq, int64_t m, const float* rows,
                                  int64_t n, int64_t k, float* y, int64_t ldy) {
  AttentionScoresTyped(q, ldq, m, rows, n, k, y, ldy);
}
BATON_AVX512 void AttentionScores(const float* q, int64_t ldq, int64_t m, const uint16_t* rows,
                                  int64_t n, int64_t k, float* y, int64_t ldy) {
  AttentionScoresTyped(q, ldq, m, rows, n, k, y, ldy);
}
BATON_AVX512 void AttentionSums(const float* p, int64_t ldp, int64_t m, const float* const* blocks,
                                int64_t block_rows, int64_t ldr, int64_t n, int64_t k, float* out,
                                int64_t ldo) {
  AttentionSumsTyped(p, ldp, m, blocks, block_rows, ldr, n, k, out, ldo);
}
BATON_AVX512 void AttentionSums(const float* p, int64_t ldp, int64_t m,
                                const uint16_t* const* blocks, int64_t block_rows, int64_t ldr,
                                int64_t n, int64_t k, float* out, int64_t ldo) {
  AttentionSumsTyped(p, ldp, m, blocks, block_rows, ldr, n, k, out, ldo);
}

}  // namespace baton::kernels::avx512
