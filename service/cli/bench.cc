// `baton bench`: load generator for a running server (baton serve or baton
// router). Closed-loop concurrency or Poisson arrivals; reports TTFT,
// inter-token and end-to-end latency percentiles, throughput and goodput.
#include <curl/curl.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <memory>
#include <numeric>
#include <random>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "baton/v1/inference.grpc.pb.h"
#include "grpcpp/grpcpp.h"
#include "nlohmann/json.hpp"
#include "service/cli/commands.h"
#include "service/cli/flag_set.h"

namespace baton::cli {
namespace {

struct BenchFlags {
  std::string addr = "localhost:50051";
  std::string baseline_addr;  // Paired comparison: every request also goes here.
  std::string metrics_addr;
  int64_t concurrency = 8;
  double rate = 0;  // Requests per second; > 0 switches to Poisson arrivals.
  int64_t requests = 64;
  int64_t warmup = 4;
  int64_t prompt_len = 128, prompt_len_max = 0;
  int64_t output_len = 64, output_len_max = 0;
  double slo_ttft_ms = 0, slo_itl_ms = 0;
  double temperature = 0, top_p = 1;  // Greedy unless set.
  int64_t seed = 1;
  bool json = false;
};

struct RequestStats {
  bool ok = false;
  std::string error;
  double ttft = 0, e2e = 0;
  std::vector<double> itl;
  int64_t output_tokens = 0;
  int64_t prompt_tokens = 0;
};

RequestStats RunOne(v1::Inference::Stub& stub, const v1::GenerateRequest& request) {
  RequestStats s;
  s.prompt_tokens = request.token_ids().ids_size();
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::minutes(10));
  const absl::Time start = absl::Now();
  absl::Time last = start;
  auto reader = stub.Generate(&context, request);
  v1::GenerateResponse chunk;
  while (reader->Read(&chunk)) {
    const absl::Time now = absl::Now();
    const int n = chunk.tokens_size();
    if (n == 0) continue;
    if (s.output_tokens == 0) {
      s.ttft = absl::ToDoubleSeconds(now - start);
      for (int i = 1; i < n; ++i) s.itl.push_back(0);
    } else {
      // Tokens that arrive together share the gap.
      const double gap = absl::ToDoubleSeconds(now - last) / n;
      for (int i = 0; i < n; ++i) s.itl.push_back(gap);
    }
    last = now;
    s.output_tokens += n;
  }
  grpc::Status status = reader->Finish();
  s.e2e = absl::ToDoubleSeconds(absl::Now() - start);
  s.ok = status.ok();
  if (!s.ok) s.error = absl::StrCat(status.error_code(), ": ", status.error_message());
  return s;
}

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const double rank = p / 100.0 * (v.size() - 1);
  const size_t lo = static_cast<size_t>(std::floor(rank));
  const size_t hi = std::min(v.size() - 1, lo + 1);
  return v[lo] + (v[hi] - v[lo]) * (rank - lo);
}

size_t CurlAppend(char* data, size_t size, size_t n, void* out) {
  static_cast<std::string*>(out)->append(data, size * n);
  return size * n;
}

// The sum of every sample of `name` (labels ignored) in a /metrics page.
double MetricSum(const std::string& text, const std::string& name) {
  double total = 0;
  size_t at = 0;
  while ((at = text.find(name, at)) != std::string::npos) {
    const bool line_start = at == 0 || text[at - 1] == '\n';
    const size_t after = at + name.size();
    at = after;
    if (!line_start || after >= text.size() || (text[after] != ' ' && text[after] != '{')) continue;
    const size_t space = text.find(' ', text[after] == '{' ? text.find('}', after) : after);
    const size_t end = text.find('\n', space);
    double v;
    if (absl::SimpleAtod(text.substr(space + 1, end - space - 1), &v)) total += v;
  }
  return total;
}

std::string FetchMetrics(const std::string& addr) {
  std::string body;
  CURL* curl = curl_easy_init();
  if (curl == nullptr) return body;
  const std::string url = absl::StrCat("http://", addr, "/metrics");
  curl_easy_setopt(curl, CURLOPT_URL, url.c_str());
  curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, CurlAppend);
  curl_easy_setopt(curl, CURLOPT_WRITEDATA, &body);
  curl_easy_setopt(curl, CURLOPT_TIMEOUT, 5L);
  if (curl_easy_perform(curl) != CURLE_OK) body.clear();
  curl_easy_cleanup(curl);
  return body;
}

// Latency percentiles, throughput and goodput of one server's requests.
nlohmann::json Summarize(const std::vector<RequestStats>& stats, double elapsed,
                         const BenchFlags& f) {
  std::vector<double> ttft, itl, e2e;
  int64_t ok = 0, good = 0, output_tokens = 0, prompt_tokens = 0;
  std::string first_error;
  for (const RequestStats& s : stats) {
    if (!s.ok) {
      if (first_error.empty()) first_error = s.error;
      continue;
    }
    ++ok;
    ttft.push_back(s.ttft);
    e2e.push_back(s.e2e);
    itl.insert(itl.end(), s.itl.begin(), s.itl.end());
    output_tokens += s.output_tokens;
    prompt_tokens += s.prompt_tokens;
    const bool ttft_ok = f.slo_ttft_ms <= 0 || s.ttft * 1e3 <= f.slo_ttft_ms;
    const bool itl_ok = f.slo_itl_ms <= 0 || Percentile(s.itl, 90) * 1e3 <= f.slo_itl_ms;
    if (ttft_ok && itl_ok) ++good;
  }
  nlohmann::json out;
  out["succeeded"] = ok;
  out["failed"] = static_cast<int64_t>(stats.size()) - ok;
  out["elapsed_s"] = elapsed;
  out["output_tokens_per_s"] = output_tokens / elapsed;
  out["prompt_tokens_per_s"] = prompt_tokens / elapsed;
  out["requests_per_s"] = ok / elapsed;
  out["goodput_requests_per_s"] = good / elapsed;
  out["slo_attainment"] = stats.empty() ? 0.0 : static_cast<double>(good) / stats.size();
  for (auto& [name, v] : std::vector<std::pair<std::string, std::vector<double>*>>{
           {"ttft_ms", &ttft}, {"itl_ms", &itl}, {"e2e_ms", &e2e}}) {
    out[name] = {
        {"p50", Percentile(*v, 50) * 1e3},
        {"p90", Percentile(*v, 90) * 1e3},
        {"p99", Percentile(*v, 99) * 1e3},
        {"mean", v->empty() ? 0.0 : std::accumulate(v->begin(), v->end(), 0.0) / v->size() * 1e3}};
  }
  if (!first_error.empty()) out["first_error"] = first_error;
  return out;
}

}  // namespace

int RunBench(const Args& args) {
  BenchFlags f;
  FlagSet flags("baton bench [flags]",
                "Measures a running server: closed-loop --concurrency, or Poisson arrivals at\n"
                "--rate requests/s. Prompts are random token ids (ignore_eos, so lengths are\n"
                "exact); lengths are fixed, or uniform in [len, len-max] when len-max is set.");
  flags.String("addr", &f.addr, "server address host:port");
  flags.String("baseline-addr", &f.baseline_addr,
               "a second server that gets every request too, one after the other in\n"
               "alternating order (concurrency 1): reports both and their paired TTFT\n"
               "difference, which this noisy a machine cannot show by separate runs");
  flags.String("metrics-addr", &f.metrics_addr,
               "the server's metrics host:port, to report engine step time per token");
  flags.Int("concurrency", &f.concurrency,
            "requests in flight (closed loop; also the cap with --rate)");
  flags.Double("rate", &f.rate, "Poisson arrival rate in requests/s (0: closed loop)");
  flags.Int("requests", &f.requests, "measured requests");
  flags.Int("warmup", &f.warmup, "requests sent and discarded first");
  flags.Int("prompt-len", &f.prompt_len, "prompt tokens");
  flags.Int("prompt-len-max", &f.prompt_len_max, "draw prompt tokens uniformly up to this");
  flags.Int("output-len", &f.output_len, "generated tokens");
  flags.Int("output-len-max", &f.output_len_max, "draw generated tokens uniformly up to this");
  flags.Double("slo-ttft", &f.slo_ttft_ms, "TTFT objective in ms for goodput (0: none)");
  flags.Double("slo-itl", &f.slo_itl_ms, "p90 inter-token latency objective in ms (0: none)");
  flags.Double("temperature", &f.temperature, "sampling temperature of every request (0: greedy)");
  flags.Double("top-p", &f.top_p, "nucleus sampling of every request (1: off)");
  flags.Int("seed", &f.seed, "seed of the prompt and length draws");
  flags.Bool("json", &f.json, "print one JSON object instead of a table");
  if (absl::Status s = flags.Parse(args); !s.ok()) {
    std::fprintf(stderr, "baton bench: %s\n", std::string(s.message()).c_str());
    return 2;
  }
  if (flags.help_requested()) {
    std::fputs(flags.HelpText().c_str(), stdout);
    return 0;
  }
  if (f.concurrency < 1 || f.requests < 1 || f.prompt_len < 1 || f.output_len < 1) {
    std::fprintf(
        stderr,
        "baton bench: --concurrency, --requests, --prompt-len and --output-len must be >= 1\n");
    return 2;
  }
  if (!f.baseline_addr.empty() && (f.concurrency != 1 || f.rate > 0)) {
    std::fprintf(stderr, "baton bench: --baseline-addr needs --concurrency 1 and no --rate\n");
    return 2;
  }
  auto channel = grpc::CreateChannel(f.addr, grpc::InsecureChannelCredentials());
  auto stub = v1::Inference::NewStub(channel);
  v1::ModelInfo info;
  {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    grpc::Status s = stub->GetModelInfo(&context, v1::GetModelInfoRequest(), &info);
    if (!s.ok()) {
      std::fprintf(stderr, "baton bench: GetModelInfo on %s: %s\n", f.addr.c_str(),
                   s.error_message().c_str());
      return 1;
    }
  }
  std::mt19937_64 rng(static_cast<uint64_t>(f.seed));
  auto draw = [&](int64_t lo, int64_t hi) {
    return hi > lo ? std::uniform_int_distribution<int64_t>(lo, hi)(rng) : lo;
  };
  const int64_t total = f.warmup + f.requests;
  std::vector<v1::GenerateRequest> requests(total);
  for (v1::GenerateRequest& r : requests) {
    const int64_t plen = draw(f.prompt_len, f.prompt_len_max);
    std::uniform_int_distribution<uint32_t> token(2, info.vocab_size() - 1);
    for (int64_t i = 0; i < plen; ++i) r.mutable_token_ids()->add_ids(token(rng));
    r.mutable_sampling()->set_max_tokens(
        static_cast<uint32_t>(draw(f.output_len, f.output_len_max)));
    r.mutable_sampling()->set_ignore_eos(true);
    r.mutable_sampling()->set_temperature(static_cast<float>(f.temperature));
    r.mutable_sampling()->set_top_p(static_cast<float>(f.top_p));
  }
  std::vector<double> arrivals(total, 0);
  if (f.rate > 0) {
    std::exponential_distribution<double> gap(f.rate);
    double t = 0;
    for (double& a : arrivals) a = (t += gap(rng));
  }

  std::unique_ptr<v1::Inference::Stub> baseline;
  if (!f.baseline_addr.empty()) {
    baseline = v1::Inference::NewStub(
        grpc::CreateChannel(f.baseline_addr, grpc::InsecureChannelCredentials()));
  }

  // Warm-up, then the measured run.
  for (int64_t i = 0; i < f.warmup; ++i) {
    RunOne(*stub, requests[i]);
    if (baseline) RunOne(*baseline, requests[i]);
  }
  const std::string metrics_before = f.metrics_addr.empty() ? "" : FetchMetrics(f.metrics_addr);
  std::vector<RequestStats> stats(f.requests), baseline_stats;
  std::atomic<int64_t> next{0};
  const absl::Time start = absl::Now();
  std::vector<std::thread> workers;
  if (baseline) {
    // Pairs in the order AB BA AB ...: whichever server runs second in a pair
    // (and so finds the caches the first one left) alternates.
    baseline_stats.resize(f.requests);
    for (int64_t i = 0; i < f.requests; ++i) {
      const v1::GenerateRequest& r = requests[f.warmup + i];
      const bool baseline_first = i % 2 == 1;
      if (baseline_first) baseline_stats[i] = RunOne(*baseline, r);
      stats[i] = RunOne(*stub, r);
      if (!baseline_first) baseline_stats[i] = RunOne(*baseline, r);
    }
  }
  for (int64_t w = 0; w < (baseline ? 0 : f.concurrency); ++w) {
    workers.emplace_back([&] {
      while (true) {
        const int64_t i = next.fetch_add(1);
        if (i >= f.requests) return;
        if (f.rate > 0) {
          const absl::Time at = start + absl::Seconds(arrivals[f.warmup + i] - arrivals[f.warmup]);
          absl::SleepFor(at - absl::Now());
        }
        stats[i] = RunOne(*stub, requests[f.warmup + i]);
      }
    });
  }
  for (std::thread& t : workers) t.join();
  const double elapsed = absl::ToDoubleSeconds(absl::Now() - start);
  const std::string metrics_after = f.metrics_addr.empty() ? "" : FetchMetrics(f.metrics_addr);

  nlohmann::json out = Summarize(stats, elapsed, f);
  out["addr"] = f.addr;
  out["mode"] = f.rate > 0 ? "poisson" : "closed_loop";
  out["concurrency"] = f.concurrency;
  out["rate"] = f.rate;
  out["requests"] = f.requests;
  const int64_t ok = out["succeeded"].get<int64_t>();
  std::string first_error = out.value("first_error", "");
  if (!f.baseline_addr.empty()) {
    nlohmann::json base = Summarize(baseline_stats, elapsed, f);
    base["addr"] = f.baseline_addr;
    if (first_error.empty()) first_error = base.value("first_error", "");
    // Per pair: this request's TTFT here minus on the baseline, measured
    // moments apart, so that the machine's drift cancels.
    std::vector<double> diff, ratio;
    for (int64_t i = 0; i < f.requests; ++i) {
      if (!stats[i].ok || !baseline_stats[i].ok) continue;
      diff.push_back(stats[i].ttft - baseline_stats[i].ttft);
      ratio.push_back(stats[i].ttft / baseline_stats[i].ttft);
    }
    out["baseline"] = base;
    out["paired"] = {{"pairs", diff.size()},
                     {"ttft_diff_ms_p50", Percentile(diff, 50) * 1e3},
                     {"ttft_ratio_p50", Percentile(ratio, 50)}};
  }
  if (!metrics_after.empty()) {
    const double step_s = MetricSum(metrics_after, "baton_engine_step_duration_seconds_sum") -
                          MetricSum(metrics_before, "baton_engine_step_duration_seconds_sum");
    const double steps = MetricSum(metrics_after, "baton_engine_step_duration_seconds_count") -
                         MetricSum(metrics_before, "baton_engine_step_duration_seconds_count");
    const double generated = MetricSum(metrics_after, "baton_generated_tokens_total") -
                             MetricSum(metrics_before, "baton_generated_tokens_total");
    out["engine_steps"] = steps;
    out["engine_generated_tokens"] = generated;
    const double step_ms = steps > 0 ? step_s / steps * 1e3 : 0.0;
    out["engine_step_ms_mean"] = step_ms;
    out["engine_busy_fraction"] = step_s / elapsed;
    // Every token of a request costs one engine step; what the client waits
    // per token beyond that step is gRPC, queueing and scheduling overhead.
    double per_token_ms = 0;
    for (const RequestStats& s : stats) {
      if (s.ok && s.output_tokens > 0) per_token_ms += s.e2e / s.output_tokens * 1e3;
    }
    per_token_ms = ok > 0 ? per_token_ms / ok : 0.0;
    out["e2e_ms_per_token"] = per_token_ms;
    out["overhead_ms_per_token"] = per_token_ms - step_ms;
  }
  if (!first_error.empty()) out["first_error"] = first_error;
  if (f.json) {
    std::printf("%s\n", out.dump().c_str());
  } else {
    std::printf("%s\n", absl::StrFormat("%s, %d requests (%d failed) in %.2f s",
                                        out["mode"].get<std::string>(), f.requests, f.requests - ok,
                                        elapsed)
                            .c_str());
    std::printf("%s\n",
                absl::StrFormat("throughput: %.1f output tok/s, %.2f req/s, goodput %.2f req/s",
                                out["output_tokens_per_s"].get<double>(),
                                out["requests_per_s"].get<double>(),
                                out["goodput_requests_per_s"].get<double>())
                    .c_str());
    for (const char* name : {"ttft_ms", "itl_ms", "e2e_ms"}) {
      std::printf("%s\n",
                  absl::StrFormat("%-8s p50 %8.2f  p90 %8.2f  p99 %8.2f", name,
                                  out[name]["p50"].get<double>(), out[name]["p90"].get<double>(),
                                  out[name]["p99"].get<double>())
                      .c_str());
    }
    if (out.contains("engine_step_ms_mean")) {
      std::printf("%s\n", absl::StrFormat("engine: %.0f steps, %.3f ms mean, busy %.0f%%; "
                                          "per token: e2e %.3f ms, overhead %.3f ms",
                                          out["engine_steps"].get<double>(),
                                          out["engine_step_ms_mean"].get<double>(),
                                          out["engine_busy_fraction"].get<double>() * 100,
                                          out["e2e_ms_per_token"].get<double>(),
                                          out["overhead_ms_per_token"].get<double>())
                              .c_str());
    }
    if (out.contains("paired")) {
      std::printf("%s\n",
                  absl::StrFormat("baseline %s: ttft_ms p50 %.2f; paired TTFT difference "
                                  "p50 %+.2f ms, ratio p50 %.3f (%d pairs)",
                                  f.baseline_addr, out["baseline"]["ttft_ms"]["p50"].get<double>(),
                                  out["paired"]["ttft_diff_ms_p50"].get<double>(),
                                  out["paired"]["ttft_ratio_p50"].get<double>(),
                                  out["paired"]["pairs"].get<int64_t>())
                      .c_str());
    }
    if (!first_error.empty()) std::printf("first error: %s\n", first_error.c_str());
  }
  const int64_t baseline_ok =
      out.contains("baseline") ? out["baseline"]["succeeded"].get<int64_t>() : f.requests;
  return ok == f.requests && baseline_ok == f.requests ? 0 : 1;
}

}  // namespace baton::cli
