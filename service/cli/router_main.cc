// `baton router`: the public endpoint of a disaggregated deployment.
#include <cstdio>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "service/cli/commands.h"
#include "service/cli/flag_set.h"
#include "service/grpc_server.h"
#include "service/metrics.h"
#include "service/peer_auth.h"
#include "service/router.h"

namespace baton::cli {

int RunRouter(const Args& args) {
  std::string prefill_list, decode_list, host = "0.0.0.0", secret, secret_file;
  std::string dispatch = "parallel";
  int64_t port = 50051, metrics_port = 9400, threshold = 0, max_attempts = 3;
  double drain_timeout_s = 30, resolve_interval_s = 5, probe_interval_s = 0.25;
  FlagSet flags("baton router --prefill LIST --decode LIST [flags]",
                "The public baton.v1.Inference endpoint in front of prefill and decode pools.\n"
                "LIST is comma-separated host:port; names are re-resolved periodically, so a\n"
                "Kubernetes headless Service name gives every pod.");
  flags.String("prefill", &prefill_list, "prefill workers (host:port,...); empty: decode prefills");
  flags.String("decode", &decode_list, "decode workers (host:port,...)");
  flags.String("host", &host, "address to listen on");
  flags.Int("port", &port, "gRPC port (0: chosen by the OS)");
  flags.Int("metrics-port", &metrics_port, "Prometheus /metrics port (0: chosen by the OS)");
  flags.Int("local-prefill-threshold", &threshold,
            "prompts shorter than this many tokens are prefilled by the decode worker when it "
            "has room (0: never)");
  flags.String("prefill-dispatch", &dispatch,
               "parallel: call the prefill and decode workers at once when the decode worker "
               "surely has room (else as decode); decode: the decode worker calls the prefill "
               "worker itself");
  flags.Int("max-attempts", &max_attempts, "tries per request when a prefill worker fails");
  flags.String("secret", &secret, "the deployment's shared secret for worker calls");
  flags.String("secret-file", &secret_file, "read the shared secret from this file");
  flags.Double("drain-timeout", &drain_timeout_s, "seconds streams may take after SIGTERM");
  flags.Double("resolve-interval", &resolve_interval_s, "seconds between DNS re-resolutions");
  flags.Double("probe-interval", &probe_interval_s, "seconds between health and load probes");
  auto fail = [](const std::string& m) {
    std::fprintf(stderr, "baton router: %s\n", m.c_str());
    return 1;
  };
  if (absl::Status s = flags.Parse(args); !s.ok()) return fail(std::string(s.message()));
  if (flags.help_requested()) {
    std::fputs(flags.HelpText().c_str(), stdout);
    return 0;
  }
  if (dispatch != "parallel" && dispatch != "decode") {
    return fail(absl::StrCat("--prefill-dispatch: \"", dispatch, "\" is not parallel or decode"));
  }
  auto prefill_targets = ParseTargets(prefill_list, "prefill");
  if (!prefill_targets.ok()) return fail(std::string(prefill_targets.status().message()));
  auto decode_targets = ParseTargets(decode_list, "decode");
  if (!decode_targets.ok()) return fail(std::string(decode_targets.status().message()));
  if (decode_targets->empty()) return fail("--decode needs at least one worker");
  auto the_secret = PeerAuth::ReadSecret(secret, secret_file);
  if (!the_secret.ok()) return fail(std::string(the_secret.status().message()));

  BlockTerminationSignals();
  ChannelPool channels;
  WorkerPool prefill(WorkerPool::Role::kPrefill, *prefill_targets, &channels, *the_secret);
  WorkerPool decode(WorkerPool::Role::kDecode, *decode_targets, &channels, *the_secret);
  prefill.Refresh(/*resolve=*/true);
  decode.Refresh(/*resolve=*/true);
  auto metrics = ServiceMetrics::Start(absl::StrCat(host, ":", metrics_port), nullptr);
  if (!metrics.ok()) return fail(std::string(metrics.status().message()));
  RouterOptions options;
  options.local_prefill_threshold = threshold;
  options.max_attempts = static_cast<int>(max_attempts);
  options.parallel_prefill = dispatch == "parallel";
  options.secret = *the_secret;
  RouterService service(&prefill, &decode, &channels, metrics->get(), options);
  GrpcServerOptions server_options;
  server_options.host = host;
  server_options.port = static_cast<int>(port);
  auto server = GrpcServer::Start(server_options, {&service});
  if (!server.ok()) return fail(std::string(server.status().message()));
  (*server)->SetServing(true);

  // Probes on their own thread: they block on slow workers, never on calls.
  std::atomic<bool> stop{false};
  std::thread prober([&] {
    absl::Time next_resolve = absl::Now() + absl::Seconds(resolve_interval_s);
    while (!stop.load()) {
      const bool resolve = absl::Now() >= next_resolve;
      if (resolve) next_resolve = absl::Now() + absl::Seconds(resolve_interval_s);
      prefill.Refresh(resolve);
      decode.Refresh(resolve);
      absl::SleepFor(absl::Seconds(probe_interval_s));
    }
  });
  std::printf(
      "baton router: listening on %s:%d, metrics on :%d (%zu prefill, %zu decode healthy)\n",
      host.c_str(), (*server)->port(), (*metrics)->port(), prefill.healthy(), decode.healthy());
  std::fflush(stdout);

  const int signal = WaitForTerminationSignal();
  std::fprintf(stderr, "baton router: signal %d: draining\n", signal);
  service.StartDraining();
  (*server)->Drain([&] { return service.active_streams() > 0; }, absl::Seconds(drain_timeout_s));
  stop.store(true);
  prober.join();
  return 0;
}

}  // namespace baton::cli
