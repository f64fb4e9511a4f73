#include "engine/kernels_avx512.h"

// GCC 12 flags the deliberately undefined registers inside its own AVX-512
// reduction intrinsics (_mm512_reduce_add_ps); the warning is spurious.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include <immintrin.h>

#include <algorithm>
#include <type_traits>

#define BATON_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl")))

namespace baton::kernels::avx512 {
namespace {

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

namespace {

// Attention scores: one cached row against many heads. A tile of one row by
// 8 heads streams the row once and keeps 8 independent accumulators busy
// (measured 1.8x faster than 4x4 tiles, whose extra loads and reductions
// stall); per (row, head) the arithmetic is Tile's.
BATON_AVX512 void ScoreRow(const float* x, int64_t ldx, int64_t m, int64_t k, const float* w,
                           float* y, int64_t ldy) {
  int64_t i = 0;
  for (; i + 8 <= m; i += 8) Tile<1, 8>(x + i * ldx, ldx, k, w, y + i * ldy, ldy);
  TileRows<1>(x + i * ldx, ldx, m - i, k, w, y + i * ldy, ldy);
}

}  // namespace

BATON_AVX512 void MatMulF32(const float* x, int64_t ldx, int64_t m, const float* rows, int64_t n,
                            int64_t k, float* y, int64_t ldy) {
  for (int64_t j = 0; j < n; ++j) ScoreRow(x, ldx, m, k, rows + j * k, y + j, ldy);
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

}  // namespace baton::kernels::avx512
