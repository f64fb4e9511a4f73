// The machine's own limits, measured in the same run as the benchmarks they
// judge: DRAM read bandwidth (a STREAM-like read of a buffer far larger than
// the caches) and peak FLOP/s of the FMA units (fp32, and bf16 dot products
// where the CPU has AVX512_BF16).
#ifndef BATON_BENCH_ROOFLINE_H_
#define BATON_BENCH_ROOFLINE_H_

#include <cstdint>

#include "engine/thread_pool.h"

namespace baton::bench {

// Bytes per second reading `bytes` with every thread of the pool; median of
// `reps` passes.
double MeasureReadBandwidth(ThreadPool& pool, int64_t bytes, int reps);
// FLOP/s of independent fp32 FMAs on every thread of the pool.
double MeasurePeakFp32Flops(ThreadPool& pool);
// FLOP/s of _mm512_dpbf16_ps, or 0 where the CPU lacks AVX512_BF16.
double MeasurePeakBf16Flops(ThreadPool& pool);

}  // namespace baton::bench

#endif  // BATON_BENCH_ROOFLINE_H_
