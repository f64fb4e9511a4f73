#include "engine/kernels_avx2.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <iterator>

#include "engine/dtype.h"
#include "engine/exp_polynomial.h"

#define BATON_AVX2 __attribute__((target("avx2,fma")))

namespace baton::kernels::avx2 {
namespace {

BATON_AVX2 inline __m256 Load8(const float* p) { return _mm256_loadu_ps(p); }

// bf16 -> f32 is exact: the bf16 bits are the high half of the float.
BATON_AVX2 inline __m256 Load8(const uint16_t* p) {
  const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(raw), 16));
}

BATON_AVX2 inline float Sum(__m256 v) {
  const __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
  __m128 s = _mm_add_ps(lo, hi);
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// R weight rows times T activation rows, 8 columns at a time: R*T
// accumulators in the 16 ymm registers, each weight vector feeding T FMAs.
template <int R, int T, typename W>
BATON_AVX2 void Tile(const float* x, int64_t ldx, int64_t k, const W* w, float* y, int64_t ldy) {
  __m256 acc[R][T];
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) acc[r][t] = _mm256_setzero_ps();
  const int64_t k8 = k / 8 * 8;
  for (int64_t c = 0; c < k8; c += 8) {
    __m256 xv[T];
    for (int t = 0; t < T; ++t) xv[t] = _mm256_loadu_ps(x + t * ldx + c);
    for (int r = 0; r < R; ++r) {
      const __m256 wv = Load8(w + r * k + c);
      for (int t = 0; t < T; ++t) acc[r][t] = _mm256_fmadd_ps(wv, xv[t], acc[r][t]);
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int t = 0; t < T; ++t) {
      float s = Sum(acc[r][t]);
      for (int64_t c = k8; c < k; ++c)
        s = std::fma(ElementToFloat(w[r * k + c]), x[t * ldx + c], s);
      y[t * ldy + r] = s;
    }
  }
}

template <int R, typename W>
BATON_AVX2 void TileRows(const float* x, int64_t ldx, int64_t m, int64_t k, const W* w, float* y,
                         int64_t ldy) {
  int64_t i = 0;
  for (; i + 3 <= m; i += 3) Tile<R, 3>(x + i * ldx, ldx, k, w, y + i * ldy, ldy);
  if (m - i == 2) Tile<R, 2>(x + i * ldx, ldx, k, w, y + i * ldy, ldy);
  if (m - i == 1) Tile<R, 1>(x + i * ldx, ldx, k, w, y + i * ldy, ldy);
}

template <typename W>
BATON_AVX2 void MatMulRowsTyped(const float* x, int64_t ldx, int64_t m, int64_t k, const W* w,
                                int64_t row_begin, int64_t row_end, float* y, int64_t ldy) {
  int64_t j = row_begin;
  for (; j + 4 <= row_end; j += 4) TileRows<4>(x, ldx, m, k, w + j * k, y + (j - row_begin), ldy);
  for (; j < row_end; ++j) TileRows<1>(x, ldx, m, k, w + j * k, y + (j - row_begin), ldy);
}

constexpr int64_t kPrefetchBytes = 4096;

// Tile<4, T> over one panel (see Matrix): the same multiply-adds in the same
// order as the row-major tile, only at other addresses. Stores the first
// `rows` rows.
template <int T, typename W>
BATON_AVX2 void PanelTile(const float* x, int64_t ldx, int64_t k, const W* panel, int rows,
                          float* y, int64_t ldy) {
  __m256 acc[4][T];
  for (int r = 0; r < 4; ++r)
    for (int t = 0; t < T; ++t) acc[r][t] = _mm256_setzero_ps();
  auto at = [panel](int r, int64_t c) {
    return panel + (c / kPanelCols) * 4 * kPanelCols + r * kPanelCols + c % kPanelCols;
  };
  const int64_t k8 = k / 8 * 8;
  for (int64_t c = 0; c < k8; c += 8) {
    // A panel is one sequential stream: keep lines in flight ahead of it
    // (see kernels_avx512.cc).
    if (c % kPanelCols == 0) {
      const char* slice = reinterpret_cast<const char*>(at(0, c)) + kPrefetchBytes;
      for (size_t line = 0; line < 4 * kPanelCols * sizeof(W); line += 64) {
        _mm_prefetch(slice + line, _MM_HINT_T0);
      }
    }
    __m256 xv[T];
    for (int t = 0; t < T; ++t) xv[t] = _mm256_loadu_ps(x + t * ldx + c);
    for (int r = 0; r < 4; ++r) {
      const __m256 wv = Load8(at(r, c));
      for (int t = 0; t < T; ++t) acc[r][t] = _mm256_fmadd_ps(wv, xv[t], acc[r][t]);
    }
  }
  for (int r = 0; r < rows; ++r) {
    for (int t = 0; t < T; ++t) {
      float s = Sum(acc[r][t]);
      for (int64_t c = k8; c < k; ++c) s = std::fma(ElementToFloat(*at(r, c)), x[t * ldx + c], s);
      y[t * ldy + r] = s;
    }
  }
}

template <typename W>
BATON_AVX2 void MatMulPanels(const float* x, int64_t ldx, int64_t m, const Matrix& w, const W* data,
                             int64_t row_begin, int64_t row_end, float* y, int64_t ldy) {
  const int64_t k = w.cols, stride = 4 * w.padded_cols();
  for (int64_t j = row_begin; j < row_end; j += 4) {
    const W* panel = data + j / 4 * stride;
    const int rows = static_cast<int>(std::min<int64_t>(4, row_end - j));
    float* yj = y + (j - row_begin);
    int64_t i = 0;
    for (; i + 3 <= m; i += 3) PanelTile<3>(x + i * ldx, ldx, k, panel, rows, yj + i * ldy, ldy);
    if (m - i == 2) PanelTile<2>(x + i * ldx, ldx, k, panel, rows, yj + i * ldy, ldy);
    if (m - i == 1) PanelTile<1>(x + i * ldx, ldx, k, panel, rows, yj + i * ldy, ldy);
  }
}

}  // namespace

BATON_AVX2 void MatMulRows(const float* x, int64_t ldx, int64_t m, const Matrix& w,
                           int64_t row_begin, int64_t row_end, float* y, int64_t ldy) {
  auto run = [&](const auto* data) BATON_AVX2 {
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

BATON_AVX2 void MatMulF32(const float* x, int64_t ldx, int64_t m, const float* rows, int64_t n,
                          int64_t k, float* y, int64_t ldy) {
  MatMulRowsTyped(x, ldx, m, k, rows, 0, n, y, ldy);
}

namespace {

// e^x for x <= 0 (engine/exp_polynomial.h), as the AVX-512 kernels compute
// it, with 2^n built in the exponent bits: AVX2 has no scalef (n >= -126
// after the clamp, a normal).
BATON_AVX2 inline __m256 ExpNonPositive(__m256 x) {
  x = _mm256_max_ps(_mm256_set1_ps(kExpMinArgument), x);
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(kLog2E)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2High), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2Low), r);
  __m256 p = _mm256_set1_ps(kExpTaylor[0]);
  for (size_t i = 1; i < std::size(kExpTaylor); ++i) {
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kExpTaylor[i]));
  }
  const __m256i bits =
      _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
}

}  // namespace

BATON_AVX2 void ExpAndSum(float* x, int64_t n, float* max_out, float* sum_out) {
  __m256 max = _mm256_set1_ps(-INFINITY);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) max = _mm256_max_ps(max, _mm256_loadu_ps(x + i));
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, max);
  float top = -INFINITY;
  for (float v : lanes) top = std::max(top, v);
  for (int64_t j = i; j < n; ++j) top = std::max(top, x[j]);
  *max_out = top;
  const __m256 top8 = _mm256_set1_ps(top);
  __m256 sum = _mm256_setzero_ps();
  for (i = 0; i + 8 <= n; i += 8) {
    const __m256 e = ExpNonPositive(_mm256_sub_ps(_mm256_loadu_ps(x + i), top8));
    _mm256_storeu_ps(x + i, e);
    sum = _mm256_add_ps(sum, e);
  }
  float total = Sum(sum);
  for (; i < n; ++i) total += x[i] = std::exp(x[i] - top);
  *sum_out = total;
}

BATON_AVX2 float Dot(const float* a, const float* b, int64_t n) {
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
    acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), acc1);
  }
  for (; i + 8 <= n; i += 8)
    acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
  float s = Sum(_mm256_add_ps(acc0, acc1));
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

BATON_AVX2 void Axpy(float a, const float* x, float* y, int64_t n) {
  const __m256 av = _mm256_set1_ps(a);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    _mm256_storeu_ps(y + i, _mm256_fmadd_ps(av, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
  }
  for (; i < n; ++i) y[i] += a * x[i];
}

// Three output rows by 32 columns per pass: 12 accumulators, and each row
// segment of the cache loaded once feeds three heads.
template <int M>
BATON_AVX2 void AccumulateGroup(const float* p, int64_t ldp, const float* rows, int64_t ldr,
                                int64_t n, int64_t k, float* out, int64_t ldo) {
  int64_t c = 0;
  for (; c + 32 <= k; c += 32) {
    __m256 acc[M][4];
    for (int i = 0; i < M; ++i)
      for (int v = 0; v < 4; ++v) acc[i][v] = _mm256_loadu_ps(out + i * ldo + c + 8 * v);
    for (int64_t j = 0; j < n; ++j) {
      const float* r = rows + j * ldr + c;
      const __m256 r0 = _mm256_loadu_ps(r), r1 = _mm256_loadu_ps(r + 8);
      const __m256 r2 = _mm256_loadu_ps(r + 16), r3 = _mm256_loadu_ps(r + 24);
      for (int i = 0; i < M; ++i) {
        const __m256 pv = _mm256_broadcast_ss(p + i * ldp + j);
        acc[i][0] = _mm256_fmadd_ps(pv, r0, acc[i][0]);
        acc[i][1] = _mm256_fmadd_ps(pv, r1, acc[i][1]);
        acc[i][2] = _mm256_fmadd_ps(pv, r2, acc[i][2]);
        acc[i][3] = _mm256_fmadd_ps(pv, r3, acc[i][3]);
      }
    }
    for (int i = 0; i < M; ++i)
      for (int v = 0; v < 4; ++v) _mm256_storeu_ps(out + i * ldo + c + 8 * v, acc[i][v]);
  }
  for (; c < k; ++c) {
    for (int i = 0; i < M; ++i) {
      float s = out[i * ldo + c];
      for (int64_t j = 0; j < n; ++j) s = std::fma(p[i * ldp + j], rows[j * ldr + c], s);
      out[i * ldo + c] = s;
    }
  }
}

BATON_AVX2 void AccumulateRows(const float* p, int64_t ldp, int64_t m, const float* rows,
                               int64_t ldr, int64_t n, int64_t k, float* out, int64_t ldo) {
  int64_t i = 0;
  for (; i + 3 <= m; i += 3)
    AccumulateGroup<3>(p + i * ldp, ldp, rows, ldr, n, k, out + i * ldo, ldo);
  if (m - i == 2) AccumulateGroup<2>(p + i * ldp, ldp, rows, ldr, n, k, out + i * ldo, ldo);
  if (m - i == 1) AccumulateGroup<1>(p + i * ldp, ldp, rows, ldr, n, k, out + i * ldo, ldo);
}

}  // namespace baton::kernels::avx2
