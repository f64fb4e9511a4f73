// `baton serve`, `baton prefill` and `baton decode`: the processes that own
// a model. They share flags and setup and differ in the services they add.
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "engine/devices.h"
#include "engine/engine_loop.h"
#include "engine/kernels.h"
#include "engine/tokenizer.h"
#include "service/cli/commands.h"
#include "service/cli/flag_set.h"
#include "service/decode_service.h"
#include "service/grpc_server.h"
#include "service/inference_service.h"
#include "service/kv_transport.h"
#include "service/metrics.h"
#include "service/peer_auth.h"
#include "service/prefill_service.h"

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
  std::string activations = "fp32";
  std::string device = "cpu";
  std::string secret, secret_file;
  int64_t data_port = 0;
  std::string advertise_host;
  int64_t testing_layer_delay_ms = 0;
};

enum class ProcessRole { kServe, kPrefill, kDecode };

const char* RoleName(ProcessRole role) {
  switch (role) {
    case ProcessRole::kServe:
      return "serve";
    case ProcessRole::kPrefill:
      return "prefill";
    case ProcessRole::kDecode:
      return "decode";
  }
  return "?";
}

const char* RoleSummary(ProcessRole role) {
  switch (role) {
    case ProcessRole::kServe:
      return "Serves a DeepSeek-V2/V3 model over gRPC (baton.v1.Inference), prefill and decode\n"
             "in one continuously batched engine.";
    case ProcessRole::kPrefill:
      return "A prefill worker (baton.internal.v1.PrefillWorker): computes prompts in token-\n"
             "budgeted batches and pushes each layer's KV to the decode worker that asked, while\n"
             "later layers compute.";
    case ProcessRole::kDecode:
      return "A decode worker (baton.internal.v1.DecodeWorker): admits requests by free KV,\n"
             "receives their KV from prefill workers on a data channel (or prefills short\n"
             "prompts itself), and streams tokens through the router.";
  }
  return "";
}

int RunModelProcess(ProcessRole role, const Args& args);

}  // namespace

std::string DefaultModelDir() { return BATON_DEFAULT_MODEL_DIR; }

int RunServe(const Args& args) { return RunModelProcess(ProcessRole::kServe, args); }
int RunPrefill(const Args& args) { return RunModelProcess(ProcessRole::kPrefill, args); }
int RunDecode(const Args& args) { return RunModelProcess(ProcessRole::kDecode, args); }

namespace {

int RunModelProcess(ProcessRole role, const Args& args) {
  ServeFlags f;
  const std::string name = RoleName(role);
  auto Fail = [&name](const std::string& message) {
    std::fprintf(stderr, "baton %s: %s\n", name.c_str(), message.c_str());
    return 1;
  };
  FlagSet flags(absl::StrCat("baton ", name, " [flags]"),
                absl::StrCat(RoleSummary(role),
                             "\nSIGTERM drains: health turns NOT_SERVING, new calls get "
                             "UNAVAILABLE,\nrunning requests finish, then the process exits 0."));
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
  flags.String("activations", &f.activations,
               "fp32 (the numerical reference) or bf16: round activations to BF16 in the "
               "weight products and use the CPU's BF16 dot products (AVX512_BF16), about 2x "
               "faster prefill and batched decode; fp32 where the CPU lacks them. Prefill and "
               "decode workers must agree");
  flags.String("device", &f.device,
               "where the model runs: cpu, or cuda / cuda:N where this build has the CUDA "
               "backend (BF16 KV cache on the GPU)");
  if (role != ProcessRole::kServe) {
    flags.String("secret", &f.secret, "the deployment's shared secret for worker-to-worker calls");
    flags.String("secret-file", &f.secret_file, "read the shared secret from this file");
  }
  if (role == ProcessRole::kPrefill) {
    flags.Int("testing-layer-delay-ms", &f.testing_layer_delay_ms,
              "fault-injection tests only: sleep this long after each layer");
  }
  if (role == ProcessRole::kDecode) {
    flags.Int("data-port", &f.data_port, "KV data channel port (0: chosen by the OS)");
    flags.String("advertise-host", &f.advertise_host,
                 "host prefill workers connect to for KV (default: --host, or $POD_IP when "
                 "--host is 0.0.0.0)");
  }
  if (absl::Status s = flags.Parse(args); !s.ok()) return Fail(std::string(s.message()));
  auto secret = PeerAuth::ReadSecret(f.secret, f.secret_file);
  if (!secret.ok()) return Fail(std::string(secret.status().message()));
  PeerAuth auth(*secret);
  if (role != ProcessRole::kServe && !auth.enabled() && !flags.help_requested()) {
    std::fprintf(stderr, "baton %s: no --secret: any peer may call the internal API\n",
                 name.c_str());
  }
  if (flags.help_requested()) {
    std::fputs(flags.HelpText().c_str(), stdout);
    return 0;
  }
  if (f.model.empty()) f.model = DefaultModelDir();

  BlockTerminationSignals();
  ModelLoadOptions load;
  load.force_f32_weights = f.f32_weights;
  load.show_progress = true;
  if (f.activations == "bf16") {
    load.precision = kernels::Precision::kBf16;
    if (!kernels::HasBf16DotProducts()) {
      std::fprintf(stderr,
                   "baton %s: --activations bf16: this CPU has no AVX512_BF16; using fp32\n",
                   name.c_str());
    }
  } else if (f.activations != "fp32") {
    return Fail(absl::StrCat("--activations: \"", f.activations, "\" is not fp32 or bf16"));
  }
  auto backend = CreateBackend(f.device, CpuBackendOptions{load.precision});
  if (!backend.ok()) return Fail(std::string(backend.status().message()));
  auto model = DeepseekModel::Load(f.model, load, *std::move(backend));
  if (!model.ok()) return Fail(std::string(model.status().message()));
  std::unique_ptr<Tokenizer> tokenizer;
  if (auto t = Tokenizer::Load(f.model); t.ok()) {
    tokenizer = std::move(*t);
  } else if (!absl::IsNotFound(t.status())) {
    return Fail(std::string(t.status().message()));
  } else {
    std::fprintf(stderr, "baton %s: %s has no tokenizer.json: token-id prompts only\n",
                 name.c_str(), f.model.c_str());
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
  service_options.role = role == ProcessRole::kServe     ? v1::ROLE_COLOCATED
                         : role == ProcessRole::kPrefill ? v1::ROLE_PREFILL
                                                         : v1::ROLE_DECODE;
  service_options.max_tokens_limit = f.max_tokens_limit;
  InferenceService service(&loop, tokenizer.get(), metrics->get(), service_options);
  std::vector<grpc::Service*> services = {&service};

  // Disaggregation: the KV layout both sides must share, and the role's
  // internal service.
  const ModelConfig& config = loop.config();
  KvLayout layout;
  // The activation precision changes the KV's values: part of the identity.
  layout.fingerprint =
      absl::StrCat(ModelFingerprint(f.model, loop.engine().model().weight_bytes()),
                   loop.engine().model().precision() == kernels::Precision::kBf16 ? "-bf16" : "");
  layout.layers = config.num_hidden_layers;
  layout.width = config.kv_cache_width();
  layout.block_size = static_cast<int>(f.kv_block_size);
  layout.dtype = loop.engine().kv_cache().dtype_name();
  std::unique_ptr<PrefillService> prefill;
  std::unique_ptr<DecodeService> decode;
  std::unique_ptr<KvReceiver> receiver;
  EngineLoopKvSink kv_sink(&loop);
  ChannelPool channels;
  DisaggregationContext disaggregation;
  ServiceMetrics* m = metrics->get();
  if (role == ProcessRole::kPrefill) {
    prefill = std::make_unique<PrefillService>(&loop, tokenizer.get(), layout, &auth, m,
                                               static_cast<int>(f.testing_layer_delay_ms));
    services.push_back(prefill.get());
  }
  if (role == ProcessRole::kDecode) {
    KvTransferObserver observer;
    observer.on_success = [m](uint64_t bytes, double seconds) {
      m->CountKvTransfer(bytes, seconds);
    };
    observer.on_failure = [m](const std::string& reason) { m->CountKvTransferFailure(reason); };
    auto r =
        KvReceiver::Start(f.host, static_cast<int>(f.data_port), layout, &auth, &kv_sink, observer);
    if (!r.ok()) return Fail(std::string(r.status().message()));
    receiver = std::move(*r);
    std::string advertise = f.advertise_host;
    if (advertise.empty()) {
      const char* pod_ip = std::getenv("POD_IP");
      advertise = f.host != "0.0.0.0" && f.host != "::" ? f.host
                  : pod_ip != nullptr                   ? pod_ip
                                                        : "127.0.0.1";
    }
    disaggregation.receiver = receiver.get();
    disaggregation.data_address = absl::StrCat(advertise, ":", receiver->port());
    disaggregation.layout = layout;
    disaggregation.auth = &auth;
    disaggregation.channels = &channels;
    service.EnableDisaggregation(&disaggregation);
    decode = std::make_unique<DecodeService>(&service, &loop, &auth, &disaggregation);
    services.push_back(decode.get());
  }

  GrpcServerOptions server_options;
  server_options.host = f.host;
  server_options.port = static_cast<int>(f.port);
  auto server = GrpcServer::Start(server_options, services);
  if (!server.ok()) return Fail(std::string(server.status().message()));
  (*server)->SetServing(true);
  const std::string data =
      receiver ? absl::StrCat(", kv data on ", disaggregation.data_address) : std::string();
  std::printf("baton %s: model %s, listening on %s:%d, metrics on :%d%s\n", name.c_str(),
              f.model.c_str(), f.host.c_str(), (*server)->port(), (*metrics)->port(), data.c_str());
  std::fflush(stdout);

  const int signal = WaitForTerminationSignal();
  std::fprintf(stderr, "baton %s: signal %d: draining (up to %.0f s)\n", name.c_str(), signal,
               f.drain_timeout_s);
  service.StartDraining();
  if (prefill) prefill->StartDraining();
  (*server)->Drain(
      [&] { return service.active_streams() > 0 || (prefill && prefill->active() > 0); },
      absl::Seconds(f.drain_timeout_s));
  std::fprintf(stderr, "baton %s: drained, exiting\n", name.c_str());
  return 0;
}

}  // namespace
}  // namespace baton::cli
