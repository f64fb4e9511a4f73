// baton-operator: deploys, autoscales and drains BatonServices.
//
//   baton-operator [--kubeconfig=PATH] [--namespace=NS] [--leader-elect=true]
//                  [--metrics-bind-address=0.0.0.0:8080] ...
//
// In a cluster it uses its service account; outside, a kubeconfig. SIGTERM
// or SIGINT: stop taking work, let reconciles in flight finish, release the
// leader Lease, exit 0. Losing the Lease exits 1 (the Deployment restarts
// the pod as a standby).
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <map>
#include <random>
#include <string>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "operator/controller.h"
#include "operator/kube_config.h"
#include "operator/leader_election.h"
#include "operator/log.h"
#include "operator/operator_metrics.h"

namespace baton::op {
namespace {

struct Flags {
  std::string kubeconfig;
  std::string context;
  std::string watch_namespace;
  std::string metrics_bind_address = "0.0.0.0:8080";
  bool leader_elect = true;
  std::string leader_election_namespace;
  std::string leader_election_id = "baton-operator";
  int workers = 2;
  std::string cluster_domain = "cluster.local";
  int resync_seconds = 300;
};

constexpr char kUsage[] = R"(usage: baton-operator [flags]

  --kubeconfig=PATH                 kubeconfig to use (default: in-cluster, else
                                    $KUBECONFIG or ~/.kube/config)
  --context=NAME                    kubeconfig context (default: current-context)
  --namespace=NS                    watch only this namespace (default: all)
  --metrics-bind-address=HOST:PORT  /metrics, /healthz, /readyz (default 0.0.0.0:8080)
  --leader-elect=BOOL               elect a leader on a Lease (default true)
  --leader-election-namespace=NS    the Lease's namespace (default: the pod's)
  --leader-election-id=NAME         the Lease's name (default baton-operator)
  --workers=N                       concurrent reconciles (default 2)
  --cluster-domain=DOMAIN           for the router's DNS names (default cluster.local)
  --resync-seconds=N                re-reconcile everything this often (default 300)
)";

// Parses --name=value, --name value and bare booleans; "" or an error.
std::string ParseFlags(int argc, char** argv, Flags* f, bool* help) {
  std::map<std::string, std::function<bool(const std::string&)>> setters = {
      {"kubeconfig",
       [&](const std::string& v) {
         f->kubeconfig = v;
         return true;
       }},
      {"context",
       [&](const std::string& v) {
         f->context = v;
         return true;
       }},
      {"namespace",
       [&](const std::string& v) {
         f->watch_namespace = v;
         return true;
       }},
      {"metrics-bind-address",
       [&](const std::string& v) {
         f->metrics_bind_address = v;
         return true;
       }},
      {"leader-elect",
       [&](const std::string& v) {
         if (v != "true" && v != "false") return false;
         f->leader_elect = v == "true";
         return true;
       }},
      {"leader-election-namespace",
       [&](const std::string& v) {
         f->leader_election_namespace = v;
         return true;
       }},
      {"leader-election-id",
       [&](const std::string& v) {
         f->leader_election_id = v;
         return true;
       }},
      {"workers",
       [&](const std::string& v) { return absl::SimpleAtoi(v, &f->workers) && f->workers > 0; }},
      {"cluster-domain",
       [&](const std::string& v) {
         f->cluster_domain = v;
         return true;
       }},
      {"resync-seconds",
       [&](const std::string& v) {
         return absl::SimpleAtoi(v, &f->resync_seconds) && f->resync_seconds > 0;
       }},
  };
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      *help = true;
      return "";
    }
    if (arg.rfind("--", 0) != 0) return absl::StrCat("unexpected argument \"", arg, "\"");
    arg = arg.substr(2);
    std::string value;
    const size_t eq = arg.find('=');
    if (eq != std::string::npos) {
      value = arg.substr(eq + 1);
      arg = arg.substr(0, eq);
    } else if (arg == "leader-elect") {
      value = "true";
    } else if (i + 1 < argc) {
      value = argv[++i];
    } else {
      return absl::StrCat("--", arg, " needs a value");
    }
    auto it = setters.find(arg);
    if (it == setters.end()) return absl::StrCat("unknown flag --", arg);
    if (!it->second(value)) return absl::StrCat("bad value for --", arg, ": \"", value, "\"");
  }
  return "";
}

std::string Identity() {
  if (const char* pod = std::getenv("POD_NAME"); pod != nullptr && *pod != '\0') return pod;
  char host[256] = {};
  gethostname(host, sizeof(host) - 1);
  return absl::StrCat(host, "_", std::random_device{}() % 100000);
}

int Main(int argc, char** argv) {
  // SIGTERM/SIGINT are taken with sigtimedwait below; block them before any
  // thread starts so that every thread inherits the mask.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  Flags flags;
  bool help = false;
  if (std::string error = ParseFlags(argc, argv, &flags, &help); !error.empty()) {
    std::fprintf(stderr, "baton-operator: %s\n\n%s", error.c_str(), kUsage);
    return 2;
  }
  if (help) {
    std::fputs(kUsage, stdout);
    return 0;
  }
  absl::StatusOr<KubeConfig> config = LoadConfig(flags.kubeconfig, flags.context);
  if (!config.ok()) {
    LogError(absl::StrCat("configuration: ", config.status().ToString()));
    return 1;
  }
  LogInfo(absl::StrCat(
      "baton-operator: API server ", config->server,
      flags.watch_namespace.empty() ? ", all namespaces" : ", namespace " + flags.watch_namespace));
  KubeClient client(*config);
  OperatorMetrics metrics;
  DefaultMetricsSource source;
  ControllerOptions co;
  co.watch_namespace = flags.watch_namespace;
  co.workers = flags.workers;
  co.resync = absl::Seconds(flags.resync_seconds);
  co.reconciler.build.cluster_domain = flags.cluster_domain;
  Controller controller(&client, &source, &metrics, co);

  const size_t colon = flags.metrics_bind_address.rfind(':');
  int port = 0;
  if (colon == std::string::npos ||
      !absl::SimpleAtoi(flags.metrics_bind_address.substr(colon + 1), &port)) {
    LogError(absl::StrCat("bad --metrics-bind-address ", flags.metrics_bind_address));
    return 2;
  }
  absl::StatusOr<std::unique_ptr<HttpServer>> http = metrics.Serve(
      flags.metrics_bind_address.substr(0, colon), port, [&] { return controller.Synced(); });
  if (!http.ok()) {
    LogError(http.status().ToString());
    return 1;
  }
  LogInfo(absl::StrCat("baton-operator: serving /metrics, /healthz and /readyz on ",
                       flags.metrics_bind_address.substr(0, colon), ":", (*http)->port()));
  controller.StartInformers();

  std::atomic<bool> lost{false};
  std::unique_ptr<LeaderElector> elector;
  std::thread election;
  auto lead = [&] {
    metrics.SetLeader(true);
    if (!controller.WaitForSync(absl::Minutes(5))) LogError("caches did not sync in 5 minutes");
    controller.RunWorkers();
  };
  if (flags.leader_elect) {
    LeaderElectionOptions lo;
    lo.ns = !flags.leader_election_namespace.empty() ? flags.leader_election_namespace : config->ns;
    lo.name = flags.leader_election_id;
    lo.identity = Identity();
    elector = std::make_unique<LeaderElector>(&client, lo);
    election = std::thread([&] {
      if (!elector->Run(lead)) lost.store(true);
      metrics.SetLeader(false);
    });
  } else {
    lead();
  }

  // Wait for a signal, or for the lease to be lost.
  int sig = 0;
  while (!lost.load()) {
    timespec tick{0, 200 * 1000 * 1000};
    sig = sigtimedwait(&signals, nullptr, &tick);
    if (sig > 0) break;
  }
  if (sig > 0) LogInfo(absl::StrCat("baton-operator: signal ", sig, ": shutting down"));
  controller.Stop();  // Reconciles in flight finish first.
  if (elector != nullptr) {
    elector->Stop();  // Releases the lease for a standby.
    election.join();
  }
  (*http)->Stop();
  if (lost.load()) {
    LogError("baton-operator: lost the leader lease; exiting");
    return 1;
  }
  LogInfo("baton-operator: stopped");
  return 0;
}

}  // namespace
}  // namespace baton::op

int main(int argc, char** argv) { return baton::op::Main(argc, argv); }
