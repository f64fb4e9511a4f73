#include "operator/metrics_source.h"

#include <cmath>
#include <limits>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "operator/http_server.h"
#include "operator/status_macros.h"

namespace baton::op {
namespace {

bool ParseValue(const std::string& s, double* out) {
  if (s == "+Inf" || s == "Inf") {
    *out = std::numeric_limits<double>::infinity();
  } else if (s == "-Inf") {
    *out = -std::numeric_limits<double>::infinity();
  } else if (s == "NaN") {
    *out = std::numeric_limits<double>::quiet_NaN();
  } else {
    return absl::SimpleAtod(s, out);
  }
  return true;
}

// Sums bucket samples named `name` by their `le`.
WindowHistogram Buckets(const std::vector<MetricSample>& samples, const std::string& name) {
  std::map<double, double> by_le;
  for (const MetricSample& s : samples) {
    if (s.name != name) continue;
    auto le = s.labels.find("le");
    double bound;
    if (le == s.labels.end() || !ParseValue(le->second, &bound)) continue;
    by_le[bound] += s.value;
  }
  return WindowHistogram(std::vector<std::pair<double, double>>(by_le.begin(), by_le.end()));
}

std::string Escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '"' || c == '\\') out.push_back('\\');
    out.push_back(c);
  }
  return out;
}

}  // namespace

absl::StatusOr<std::vector<MetricSample>> ParsePrometheusText(const std::string& text) {
  std::vector<MetricSample> out;
  int line_no = 0;
  for (absl::string_view raw : absl::StrSplit(text, '\n')) {
    ++line_no;
    const std::string line(absl::StripAsciiWhitespace(raw));
    if (line.empty() || line[0] == '#') continue;
    MetricSample s;
    size_t i = 0;
    while (i < line.size() && line[i] != '{' && line[i] != ' ' && line[i] != '\t') ++i;
    s.name = line.substr(0, i);
    auto bad = [&](const char* what) {
      return absl::InvalidArgumentError(absl::StrCat("metrics line ", line_no, ": ", what));
    };
    if (s.name.empty()) return bad("no metric name");
    if (i < line.size() && line[i] == '{') {
      ++i;
      while (true) {
        while (i < line.size() && (line[i] == ' ' || line[i] == ',')) ++i;
        if (i >= line.size()) return bad("unterminated labels");
        if (line[i] == '}') {
          ++i;
          break;
        }
        const size_t eq = line.find('=', i);
        if (eq == std::string::npos || eq + 1 >= line.size() || line[eq + 1] != '"') {
          return bad("bad label");
        }
        std::string key(absl::StripAsciiWhitespace(line.substr(i, eq - i)));
        std::string value;
        size_t j = eq + 2;
        for (; j < line.size() && line[j] != '"'; ++j) {
          if (line[j] == '\\' && j + 1 < line.size()) {
            ++j;
            value.push_back(line[j] == 'n' ? '\n' : line[j]);
          } else {
            value.push_back(line[j]);
          }
        }
        if (j >= line.size()) return bad("unterminated label value");
        s.labels[key] = value;
        i = j + 1;
      }
    }
    std::vector<std::string> rest =
        absl::StrSplit(line.substr(i), absl::ByAnyChar(" \t"), absl::SkipEmpty());
    if (rest.empty() || !ParseValue(rest[0], &s.value)) return bad("bad value");
    out.push_back(std::move(s));
  }
  return out;
}

WorkerMetrics ExtractWorkerMetrics(const std::vector<MetricSample>& samples) {
  WorkerMetrics m;
  const std::map<std::string, double*> sums = {
      {"baton_requests_running", &m.requests_running},
      {"baton_requests_queued", &m.requests_queued},
      {"baton_kv_blocks_used", &m.kv_blocks_used},
      {"baton_kv_blocks_total", &m.kv_blocks_total},
      {"baton_prefill_queue_tokens", &m.prefill_queue_tokens},
      {"baton_prompt_tokens_total", &m.prompt_tokens_total},
      {"baton_generated_tokens_total", &m.generated_tokens_total},
  };
  for (const MetricSample& s : samples) {
    auto it = sums.find(s.name);
    if (it != sums.end() && std::isfinite(s.value)) *it->second += s.value;
  }
  m.ttft = Buckets(samples, "baton_time_to_first_token_seconds_bucket");
  m.itl = Buckets(samples, "baton_inter_token_latency_seconds_bucket");
  return m;
}

PodObservation PodState(const Json& pod, absl::Time now) {
  PodObservation o;
  o.name = GetString(pod, {"metadata", "name"});
  o.terminating = Find(pod, {"metadata", "deletionTimestamp"}) != nullptr;
  const Json* conditions = Find(pod, {"status", "conditions"});
  if (conditions != nullptr && conditions->is_array()) {
    for (const Json& c : *conditions) {
      if (GetString(c, {"type"}) != "Ready") continue;
      o.ready = GetString(c, {"status"}) == "True";
      if (o.ready) {
        std::optional<absl::Time> since = ParseTimestamp(GetString(c, {"lastTransitionTime"}));
        o.ready_seconds = since ? std::max(0.0, absl::ToDoubleSeconds(now - *since)) : 0;
      }
    }
  }
  if (o.terminating) o.ready = false;
  return o;
}

DefaultMetricsSource::DefaultMetricsSource(absl::Duration timeout) : timeout_(timeout) {}

std::vector<PodObservation> DefaultMetricsSource::Observe(const PoolQuery& query,
                                                          const std::vector<Json>& pods,
                                                          absl::Time now) {
  return query.spec.source == MetricsSpec::Source::kPrometheus
             ? ObserveByPrometheus(query, pods, now)
             : ObserveByScrape(query, pods, now);
}

std::vector<PodObservation> DefaultMetricsSource::ObserveByScrape(const PoolQuery& query,
                                                                  const std::vector<Json>& pods,
                                                                  absl::Time now) {
  std::vector<PodObservation> out;
  {
    // Forget pods not scraped for a long time (gone, or in another pool).
    absl::MutexLock lock(&mu_);
    for (auto it = previous_.begin(); it != previous_.end();) {
      it = now - it->second.time > absl::Minutes(30) ? previous_.erase(it) : std::next(it);
    }
  }
  for (const Json& pod : pods) {
    PodObservation o = PodState(pod, now);
    const std::string uid = GetString(pod, {"metadata", "uid"});
    const std::string ip = GetString(pod, {"status", "podIP"});
    if (o.ready && !ip.empty()) {
      HttpClientRequest req;
      const bool v6 = ip.find(':') != std::string::npos;
      req.url = absl::StrCat("http://", v6 ? "[" : "", ip, v6 ? "]" : "", ":", query.metrics_port,
                             "/metrics");
      req.timeout = timeout_;
      req.connect_timeout = timeout_;
      absl::StatusOr<HttpClientResponse> resp = http_.Do(req);
      absl::StatusOr<std::vector<MetricSample>> samples =
          resp.ok() && resp->status == 200
              ? ParsePrometheusText(resp->body)
              : absl::StatusOr<std::vector<MetricSample>>(absl::UnavailableError("scrape failed"));
      if (samples.ok()) {
        Scrape now_scrape{now, ExtractWorkerMetrics(*samples)};
        const WorkerMetrics& m = now_scrape.metrics;
        o.has_metrics = true;
        o.requests_running = m.requests_running;
        o.requests_queued = m.requests_queued;
        o.kv_blocks_used = m.kv_blocks_used;
        o.kv_blocks_total = m.kv_blocks_total;
        o.prefill_queue_tokens = m.prefill_queue_tokens;
        absl::MutexLock lock(&mu_);
        auto prev = previous_.find(uid);
        if (prev != previous_.end()) {
          const double dt = absl::ToDoubleSeconds(now - prev->second.time);
          const WorkerMetrics& p = prev->second.metrics;
          // A counter that went down is a restarted worker: no window yet.
          if (dt > 0 && m.prompt_tokens_total >= p.prompt_tokens_total &&
              m.generated_tokens_total >= p.generated_tokens_total) {
            o.has_window = true;
            o.prompt_tokens_per_second = (m.prompt_tokens_total - p.prompt_tokens_total) / dt;
            o.generated_tokens_per_second =
                (m.generated_tokens_total - p.generated_tokens_total) / dt;
            o.ttft = m.ttft.Since(p.ttft);
            o.itl = m.itl.Since(p.itl);
          }
        }
        // The window is the time since the previous autoscaler tick.
        previous_[uid] = std::move(now_scrape);
      }
    }
    out.push_back(std::move(o));
  }
  return out;
}

absl::StatusOr<Json> DefaultMetricsSource::Query(const std::string& base_url,
                                                 const std::string& promql) const {
  HttpClientRequest req;
  std::string base = base_url;
  while (!base.empty() && base.back() == '/') base.pop_back();
  req.url = absl::StrCat(base, "/api/v1/query?query=", PercentEncode(promql));
  req.timeout = timeout_;
  BATON_ASSIGN_OR_RETURN(HttpClientResponse resp, http_.Do(req));
  if (resp.status != 200) {
    return absl::UnavailableError(absl::StrCat("prometheus: HTTP ", resp.status));
  }
  BATON_ASSIGN_OR_RETURN(Json body, ParseJson(resp.body, "prometheus response"));
  if (GetString(body, {"status"}) != "success") {
    return absl::UnavailableError(absl::StrCat("prometheus: ", GetString(body, {"error"})));
  }
  const Json* result = Find(body, {"data", "result"});
  if (result == nullptr || !result->is_array()) {
    return absl::UnavailableError("prometheus: no result vector");
  }
  return *result;
}

std::vector<PodObservation> DefaultMetricsSource::ObserveByPrometheus(const PoolQuery& query,
                                                                      const std::vector<Json>& pods,
                                                                      absl::Time now) {
  std::vector<PodObservation> out;
  std::vector<std::string> names;
  for (const Json& pod : pods) {
    out.push_back(PodState(pod, now));
    names.push_back(out.back().name);
  }
  if (names.empty()) return out;
  // PodMonitor/ServiceMonitor scrapes carry `namespace` and `pod` labels.
  const std::string selector = absl::StrCat("{namespace=\"", Escape(query.ns), "\",pod=~\"",
                                            Escape(absl::StrJoin(names, "|")), "\"}");
  const std::string window = absl::StrCat("[", query.spec.window_seconds, "s]");
  auto by_pod = [&](const std::string& promql) -> std::map<std::string, double> {
    std::map<std::string, double> values;
    absl::StatusOr<Json> result = Query(query.spec.prometheus_url, promql);
    if (!result.ok()) return values;
    for (const Json& r : *result) {
      const Json* v = Find(r, {"value"});
      double value;
      if (v == nullptr || !v->is_array() || v->size() != 2 || !(*v)[1].is_string() ||
          !ParseValue((*v)[1].get<std::string>(), &value)) {
        continue;
      }
      values[GetString(r, {"metric", "pod"})] = value;
    }
    return values;
  };
  auto histograms = [&](const std::string& metric) {
    std::map<std::string, std::vector<std::pair<double, double>>> per_pod;
    absl::StatusOr<Json> result =
        Query(query.spec.prometheus_url,
              absl::StrCat("sum by (pod, le) (rate(", metric, "_bucket", selector, window, "))"));
    if (!result.ok()) return std::map<std::string, WindowHistogram>();
    for (const Json& r : *result) {
      const Json* v = Find(r, {"value"});
      double le, value;
      if (v == nullptr || !v->is_array() || v->size() != 2 || !(*v)[1].is_string() ||
          !ParseValue(GetString(r, {"metric", "le"}), &le) ||
          !ParseValue((*v)[1].get<std::string>(), &value)) {
        continue;
      }
      // A rate times the window is a count; quantiles ignore the scale.
      per_pod[GetString(r, {"metric", "pod"})].emplace_back(le, value * query.spec.window_seconds);
    }
    std::map<std::string, WindowHistogram> h;
    for (auto& [pod, buckets] : per_pod) h[pod] = WindowHistogram(std::move(buckets));
    return h;
  };
  // A pod counts as measured when its running-requests gauge is there.
  const auto running = by_pod(absl::StrCat("sum by (pod) (baton_requests_running", selector, ")"));
  const auto queued = by_pod(absl::StrCat("sum by (pod) (baton_requests_queued", selector, ")"));
  const auto kv_used = by_pod(absl::StrCat("sum by (pod) (baton_kv_blocks_used", selector, ")"));
  const auto kv_total = by_pod(absl::StrCat("sum by (pod) (baton_kv_blocks_total", selector, ")"));
  const auto queue_tokens =
      by_pod(absl::StrCat("sum by (pod) (baton_prefill_queue_tokens", selector, ")"));
  const auto prompt =
      by_pod(absl::StrCat("sum by (pod) (rate(baton_prompt_tokens_total", selector, window, "))"));
  const auto generated = by_pod(
      absl::StrCat("sum by (pod) (rate(baton_generated_tokens_total", selector, window, "))"));
  const auto ttft = histograms("baton_time_to_first_token_seconds");
  const auto itl = histograms("baton_inter_token_latency_seconds");
  auto get = [](const std::map<std::string, double>& m, const std::string& k) {
    auto it = m.find(k);
    return it == m.end() ? 0.0 : it->second;
  };
  for (PodObservation& o : out) {
    if (!o.ready || running.count(o.name) == 0) continue;
    o.has_metrics = true;
    o.has_window = true;
    o.requests_running = get(running, o.name);
    o.requests_queued = get(queued, o.name);
    o.kv_blocks_used = get(kv_used, o.name);
    o.kv_blocks_total = get(kv_total, o.name);
    o.prefill_queue_tokens = get(queue_tokens, o.name);
    o.prompt_tokens_per_second = get(prompt, o.name);
    o.generated_tokens_per_second = get(generated, o.name);
    if (auto it = ttft.find(o.name); it != ttft.end()) o.ttft = it->second;
    if (auto it = itl.find(o.name); it != itl.end()) o.itl = it->second;
  }
  return out;
}

}  // namespace baton::op
