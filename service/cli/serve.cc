// `baton serve`: prefill and decode in one process behind baton.v1.Inference.
#include <unistd.h>

#include <cstdio>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "engine/engine_loop.h"
#include "engine/tokenizer.h"
#include "service/cli/commands.h"
#include "service/cli/flag_set.h"
#include "service/grpc_server.h"
#include "service/inference_service.h"
#include "service/metrics.h"

namespace baton::cli {
namespace {

struct ServeFlags {
  std::string model;
  std::string host = "0.0.0.0";
  int64_t port = 50051;
  int64_t metrics_port = 9400;
  int64_t threads = 0;
  int64_t kv_cache_mb = 0;
  int64_t kv_block_size = 16;
  int64_t step_token_budget = 256;
  int64_t max_running = 64;
  int64_t max_queued = 256;
  int64_t max_tokens_limit = 4096;
  double drain_timeout_s = 30;
  bool f32_weights = false;
};

int Fail(const std::string& message) {
  std::fprintf(stderr, "baton serve: %s\n", message.c_str());
  return 1;
}

}  // namespace

std::string DefaultModelDir() { return BATON_DEFAULT_MODEL_DIR; }

int RunServe(const Args& args) {
  ServeFlags f;
  FlagSet flags(
      "baton serve [flags]",
      "Serves a DeepSeek-V2/V3 model over gRPC (baton.v1.Inference), prefill and decode\n"
      "in one continuously batched engine. SIGTERM drains: health turns NOT_SERVING, new\n"
      "calls get UNAVAILABLE, running requests finish, then the process exits 0.");
  flags.String("model", &f.model,
               "model directory (config.json, *.safetensors, tokenizer.json); default: the "
               "embedded model " +
                   DefaultModelDir());
  flags.String("host", &f.host, "address to listen on");
  flags.Int("port", &f.port, "gRPC port (0: chosen by the OS)");
  flags.Int("metrics-port", &f.metrics_port, "Prometheus /metrics port (0: chosen by the OS)");
  flags.Int("threads", &f.threads, "compute threads (0: one per core)");
  flags.Int("kv-cache-mb", &f.kv_cache_mb,
            "KV cache size in MiB (0: max-running full contexts, at most 2048)");
  flags.Int("kv-block-size", &f.kv_block_size, "tokens per KV cache block");
  flags.Int("step-token-budget", &f.step_token_budget,
            "tokens per engine step; long prompts are prefilled in chunks of at most this");
  flags.Int("max-running", &f.max_running, "requests in the running batch");
  flags.Int("max-queued", &f.max_queued,
            "requests waiting beyond the batch; more get RESOURCE_EXHAUSTED");
  flags.Int("max-tokens-limit", &f.max_tokens_limit, "largest sampling.max_tokens accepted");
  flags.Double("drain-timeout", &f.drain_timeout_s,
               "seconds running requests may take to finish after SIGTERM");
  flags.Bool("f32-weights", &f.f32_weights, "keep BF16 weights as F32 in memory");
  if (absl::Status s = flags.Parse(args); !s.ok()) return Fail(std::string(s.message()));
  if (flags.help_requested()) {
    std::fputs(flags.HelpText().c_str(), stdout);
    return 0;
  }
  if (f.model.empty()) f.model = DefaultModelDir();

  BlockTerminationSignals();
  ModelLoadOptions load;
  load.force_f32_weights = f.f32_weights;
  load.show_progress = true;
  auto model = DeepseekModel::Load(f.model, load);
  if (!model.ok()) return Fail(std::string(model.status().message()));
  std::unique_ptr<Tokenizer> tokenizer;
  if (auto t = Tokenizer::Load(f.model); t.ok()) {
    tokenizer = std::move(*t);
  } else if (!absl::IsNotFound(t.status())) {
    return Fail(std::string(t.status().message()));
  } else {
    std::fprintf(stderr, "baton serve: %s has no tokenizer.json: token-id prompts only\n",
                 f.model.c_str());
  }

  EngineOptions engine_options;
  engine_options.threads = static_cast<int>(f.threads);
  engine_options.kv_block_size = static_cast<int>(f.kv_block_size);
  engine_options.kv_cache_bytes = f.kv_cache_mb << 20;
  engine_options.step_token_budget = f.step_token_budget;
  engine_options.max_running = static_cast<int>(f.max_running);
  auto engine = Engine::Create(std::move(*model), engine_options);
  if (!engine.ok()) return Fail(std::string(engine.status().message()));

  // The loop reports steps to the metrics, which read the loop's stats: the
  // metrics pointer is set once both exist.
  std::atomic<ServiceMetrics*> metrics_for_steps{nullptr};
  EngineLoopOptions loop_options;
  loop_options.max_queued = f.max_queued;
  loop_options.on_step = [&metrics_for_steps](const StepInfo& step) {
    if (ServiceMetrics* m = metrics_for_steps.load()) {
      m->ObserveStep(absl::ToDoubleSeconds(step.duration), step.tokens, step.sequences);
    }
  };
  EngineLoop loop(std::move(*engine), loop_options);
  auto metrics = ServiceMetrics::Start(absl::StrCat(f.host, ":", f.metrics_port),
                                       [&loop] { return loop.stats(); });
  if (!metrics.ok()) return Fail(std::string(metrics.status().message()));
  metrics_for_steps.store(metrics->get());

  InferenceServiceOptions service_options;
  service_options.model_name = f.model.substr(f.model.find_last_of('/') + 1);
  service_options.role = v1::ROLE_COLOCATED;
  service_options.max_tokens_limit = f.max_tokens_limit;
  InferenceService service(&loop, tokenizer.get(), metrics->get(), service_options);
  GrpcServerOptions server_options;
  server_options.host = f.host;
  server_options.port = static_cast<int>(f.port);
  auto server = GrpcServer::Start(server_options, {&service});
  if (!server.ok()) return Fail(std::string(server.status().message()));
  (*server)->SetServing(true);
  std::printf("baton serve: model %s, listening on %s:%d, metrics on :%d\n", f.model.c_str(),
              f.host.c_str(), (*server)->port(), (*metrics)->port());
  std::fflush(stdout);

  const int signal = WaitForTerminationSignal();
  std::fprintf(stderr, "baton serve: signal %d: draining (up to %.0f s)\n", signal,
               f.drain_timeout_s);
  (*server)->SetServing(false);
  service.StartDraining();
  const absl::Time deadline = absl::Now() + absl::Seconds(f.drain_timeout_s);
  while (service.active_streams() > 0 && absl::Now() < deadline)
    absl::SleepFor(absl::Milliseconds(20));
  (*server)->Shutdown(absl::Seconds(1));
  std::fprintf(stderr, "baton serve: drained, exiting\n");
  return 0;
}

}  // namespace baton::cli
