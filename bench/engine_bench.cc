// baton-engine-bench: prefill and decode tokens/s of the CPU engine on a model
// directory, each as a fraction of a roofline measured in the same run.
//
//   decode: (weight bytes + KV bytes read per step) / step time, against the
//           DRAM read bandwidth measured right before and after that point;
//   prefill: matrix and attention FLOPs per second, against the measured
//           fp32 FMA peak and the bf16 dot-product peak.
//
// Decode contexts are filled with synthetic latents (the step's cost does not
// depend on their values), so a 2048-token context needs no 2048-token prefill.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "bench/roofline.h"
#include "engine/deepseek_model.h"
#include "engine/devices.h"
#include "engine/kernels.h"
#include "nlohmann/json.hpp"

namespace baton::bench {
namespace {

[[noreturn]] void Die(const absl::Status& status) {
  std::fprintf(stderr, "baton-engine-bench: %s\n", std::string(status.message()).c_str());
  std::exit(1);
}

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

struct DecodeResult {
  double step_s = 0;
  double bytes = 0;
};

// Median step time of `steps` decode steps of `batch` sequences at `context`.
DecodeResult Decode(DeepseekModel& model, ThreadPool& pool, int batch, int context, int steps) {
  const ModelConfig& c = model.config();
  auto cache_owner = model.NewKvCache(16, int64_t{batch} * ((context + steps + 15) / 16 + 1));
  if (!cache_owner.ok()) Die(cache_owner.status());
  KvCache& cache = **cache_owner;
  std::vector<KvBlocks> blocks;
  std::mt19937 rng(1);
  std::normal_distribution<float> dist(0.f, 0.5f);
  std::vector<float> values(static_cast<size_t>(context) * c.kv_cache_width());
  for (float& v : values) v = dist(rng);
  std::vector<uint8_t> rows(context * cache.row_bytes());
  if (cache.dtype() == DType::kBF16) {
    auto* out = reinterpret_cast<uint16_t*>(rows.data());
    for (size_t e = 0; e < values.size(); ++e) out[e] = FloatToBf16(values[e]);
  } else {
    std::memcpy(rows.data(), values.data(), rows.size());
  }
  for (int b = 0; b < batch; ++b) {
    blocks.emplace_back(&cache);
    blocks.back().Reserve(context + steps);
    for (int layer = 0; layer < c.num_hidden_layers; ++layer) {
      if (absl::Status s = cache.ImportLayer(layer, blocks.back().table(), 0, context, rows.data());
          !s.ok()) {
        Die(s);
      }
    }
  }
  std::vector<int32_t> tokens(batch);
  for (int b = 0; b < batch; ++b) tokens[b] = 2 + (b * 7919) % (c.vocab_size - 2);
  std::vector<float> logits;
  std::vector<double> times, bytes;
  for (int s = 0; s < steps; ++s) {
    std::vector<ForwardChunk> chunks;
    for (int b = 0; b < batch; ++b) {
      chunks.push_back({&tokens[b], 1, context + s, &blocks[b].table(), LogitsMode::kLast});
    }
    const double start = Now();
    if (!model.Forward(chunks, cache, pool, &logits).ok()) return {};
    times.push_back(Now() - start);
    const ForwardStats& st = model.last_forward_stats();
    bytes.push_back(static_cast<double>(st.weight_bytes + st.kv_bytes));
    for (int b = 0; b < batch; ++b) {  // Greedy next tokens: realistic routing.
      const float* row = &logits[static_cast<size_t>(b) * c.vocab_size];
      tokens[b] = static_cast<int32_t>(std::max_element(row, row + c.vocab_size) - row);
    }
  }
  // Skip the first step (cold caches, page faults).
  std::vector<size_t> order(times.size() - 1);
  for (size_t i = 0; i < order.size(); ++i) order[i] = i + 1;
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return times[a] < times[b]; });
  const size_t mid = order[order.size() / 2];
  return {times[mid], bytes[mid]};
}

struct PrefillResult {
  double seconds = 0;
  double flops = 0;
};

PrefillResult Prefill(DeepseekModel& model, ThreadPool& pool, int length, int reps) {
  const ModelConfig& c = model.config();
  auto cache_owner = model.NewKvCache(16, (length + 15) / 16);
  if (!cache_owner.ok()) Die(cache_owner.status());
  KvCache& cache = **cache_owner;
  KvBlocks blocks(&cache);
  blocks.Reserve(length);
  std::vector<int32_t> tokens(length);
  for (int i = 0; i < length; ++i) tokens[i] = 2 + (i * 7919) % (c.vocab_size - 2);
  std::vector<float> logits;
  PrefillResult best;
  for (int r = 0; r < reps; ++r) {
    const double start = Now();
    ForwardChunk chunk{tokens.data(), length, 0, &blocks.table(), LogitsMode::kLast};
    if (!model.Forward({chunk}, cache, pool, &logits).ok()) return {};
    const double s = Now() - start;
    if (best.seconds == 0 || s < best.seconds) {
      best = {s, static_cast<double>(model.last_forward_stats().flops)};
    }
  }
  return best;
}

int Main(int argc, char** argv) {
  if (argc < 2 || std::string(argv[1]) == "--help") {
    std::fprintf(stderr,
                 "usage: baton-engine-bench MODEL_DIR [--quick] [--json FILE] [--batch N]\n"
                 "                          [--context N] [--steps N] [--no-prefill] [--bf16]\n"
                 "                          [--device D] [--peak-gbps X] [--peak-tflops X]\n"
                 "Decode tokens/s at batch 1, 8, 32 and contexts 16 and 2048, prefill tokens/s,\n"
                 "each against a roofline measured in the same run. --batch and --context\n"
                 "restrict decode to one point (for profiling); --steps sets decode steps;\n"
                 "--bf16 runs the weight products with BF16 activations where the CPU can.\n"
                 "--batch and --context take comma-separated lists. --device cuda[:N] runs on a\n"
                 "GPU: decode is then compared with --peak-gbps (the device's datasheet memory\n"
                 "bandwidth) and prefill with --peak-tflops (its dense BF16 tensor peak)\n"
                 "instead of the CPU rooflines.\n");
    return 2;
  }
  const std::string dir = argv[1];
  bool quick = false, prefill = true;
  ModelLoadOptions options;
  std::string json_path, device = "cpu";
  double peak_gbps = 0, peak_tflops = 0;
  auto list = [](const char* text) {
    std::vector<int> values;
    for (absl::string_view v : absl::StrSplit(text, ',')) {
      int n = 0;
      if (absl::SimpleAtoi(v, &n) && n > 0) values.push_back(n);
    }
    return values;
  };
  std::vector<int> batches = {1, 8, 32}, contexts = {16, 2048};
  int steps = 0;
  for (int i = 2; i < argc; ++i) {
    const std::string arg = argv[i];
    const bool has_value = i + 1 < argc;
    if (arg == "--quick") quick = true;
    if (arg == "--no-prefill") prefill = false;
    if (arg == "--bf16") options.precision = kernels::Precision::kBf16;
    if (arg == "--json" && has_value) json_path = argv[++i];
    if (arg == "--batch" && has_value) batches = list(argv[++i]);
    if (arg == "--context" && has_value) contexts = list(argv[++i]);
    if (arg == "--device" && has_value) device = argv[++i];
    if (arg == "--peak-gbps" && has_value) peak_gbps = std::atof(argv[++i]);
    if (arg == "--peak-tflops" && has_value) peak_tflops = std::atof(argv[++i]);
    if (arg == "--steps" && has_value) steps = std::max(2, std::atoi(argv[++i]));
  }
  if (steps == 0) steps = quick ? 6 : 12;
  ThreadPool pool(0);
  auto backend = CreateBackend(device, CpuBackendOptions{options.precision});
  if (!backend.ok()) Die(backend.status());
  const bool on_cpu = device == "cpu";
  auto model = DeepseekModel::Load(dir, options, *std::move(backend));
  if (!model.ok()) {
    std::fprintf(stderr, "baton-engine-bench: %s\n", std::string(model.status().message()).c_str());
    return 1;
  }
  const ModelConfig& c = (*model)->config();
  nlohmann::json out;
  out["model"] = dir;
  out["threads"] = pool.num_threads();
  out["isa"] = kernels::IsaName();
  out["precision"] = (*model)->precision() == kernels::Precision::kBf16 ? "bf16" : "fp32";
  out["weight_bytes"] = (*model)->weight_bytes();
  out["device"] = (*model)->backend().name();
  // The CPU's rooflines are measured here; a GPU's peaks are given.
  const double bandwidth =
      on_cpu ? MeasureReadBandwidth(pool, int64_t{1} << 30, quick ? 3 : 7) : peak_gbps * 1e9;
  const double fp32_peak = on_cpu ? MeasurePeakFp32Flops(pool) : 0.0;
  const double bf16_peak = on_cpu ? MeasurePeakBf16Flops(pool) : peak_tflops * 1e12;
  out["roofline"] = {{"read_gb_per_s", bandwidth / 1e9},
                     {"fp32_gflops", fp32_peak / 1e9},
                     {"bf16_gflops", bf16_peak / 1e9}};
  if (on_cpu) {
    std::printf("%s\n", absl::StrFormat(
                            "roofline: DRAM read %.1f GB/s, fp32 %.0f GFLOP/s, bf16 %.0f GFLOP/s "
                            "(%d threads, %s, %s activations)",
                            bandwidth / 1e9, fp32_peak / 1e9, bf16_peak / 1e9, pool.num_threads(),
                            kernels::IsaName(),
                            (*model)->precision() == kernels::Precision::kBf16 ? "bf16" : "fp32")
                            .c_str());
  } else {
    std::printf("device %s, peaks given: memory %.0f GB/s, dense BF16 %.0f TFLOP/s\n",
                (*model)->backend().name().c_str(), peak_gbps, peak_tflops);
  }
  for (int context : contexts) {
    if (context + steps + 1 > c.max_position_embeddings) continue;
    for (int batch : batches) {
      // This VM's memory bandwidth drifts by tens of percent within a minute
      // (other tenants), so each point is compared with the better of two
      // reads taken right before and right after it.
      const double before = on_cpu ? MeasureReadBandwidth(pool, int64_t{1} << 30, 3) : bandwidth;
      DecodeResult d = Decode(**model, pool, batch, context, steps);
      if (d.step_s == 0) continue;
      const double local_bandwidth =
          on_cpu ? std::max(before, MeasureReadBandwidth(pool, int64_t{1} << 30, 3)) : bandwidth;
      const double fraction = local_bandwidth > 0 ? d.bytes / local_bandwidth / d.step_s : 0.0;
      out["decode"].push_back({{"batch", batch},
                               {"context", context},
                               {"step_ms", d.step_s * 1e3},
                               {"tokens_per_s", batch / d.step_s},
                               {"bytes_per_step", d.bytes},
                               {"read_gb_per_s", local_bandwidth / 1e9},
                               {"roofline_fraction", fraction}});
      std::printf("%s\n", absl::StrFormat("decode  batch %2d ctx %4d: %8.2f ms/step %9.1f tok/s  "
                                          "%6.1f MB/step  %.2f of memory roofline (%.1f GB/s)",
                                          batch, context, d.step_s * 1e3, batch / d.step_s,
                                          d.bytes / 1e6, fraction, local_bandwidth / 1e9)
                              .c_str());
    }
  }
  for (int length : {128, 512, 2048}) {
    if (!prefill) break;
    if (length > c.max_position_embeddings || (quick && length > 512)) continue;
    PrefillResult p = Prefill(**model, pool, length, quick ? 1 : 2);
    if (p.seconds == 0) continue;
    const double rate = p.flops / p.seconds;
    out["prefill"].push_back({{"tokens", length},
                              {"seconds", p.seconds},
                              {"tokens_per_s", length / p.seconds},
                              {"gflops", rate / 1e9},
                              {"fp32_peak_fraction", fp32_peak > 0 ? rate / fp32_peak : 0.0},
                              {"bf16_peak_fraction", bf16_peak > 0 ? rate / bf16_peak : 0.0}});
    std::printf("%s\n",
                absl::StrFormat("prefill %4d tokens: %8.1f tok/s %7.1f GFLOP/s  %.2f of fp32 "
                                "peak, %.2f of bf16 peak",
                                length, length / p.seconds, rate / 1e9,
                                fp32_peak > 0 ? rate / fp32_peak : 0.0,
                                bf16_peak > 0 ? rate / bf16_peak : 0.0)
                    .c_str());
  }
  if (!json_path.empty()) {
    FILE* f = std::fopen(json_path.c_str(), "w");
    if (f != nullptr) {
      std::fprintf(f, "%s\n", out.dump(2).c_str());
      std::fclose(f);
    }
  }
  return 0;
}

}  // namespace
}  // namespace baton::bench

int main(int argc, char** argv) { return baton::bench::Main(argc, argv); }
