// The baton-operator binary as a user runs it outside the cluster: a
// kubeconfig pointing at the fake API server, leader election on, its
// /healthz, /readyz and /metrics; it reconciles a BatonService; SIGTERM makes
// it release the Lease and exit 0.
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "operator/http_client.h"
#include "tests/operator/fake_api_server.h"

namespace baton::op {
namespace {

using testing::FakeApiServer;
using ::testing::HasSubstr;

bool Eventually(const std::function<bool()>& done, absl::Duration timeout = absl::Seconds(15)) {
  const absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    if (done()) return true;
    absl::SleepFor(absl::Milliseconds(20));
  }
  return done();
}

// The operator as a child process; its stderr is read line by line.
class OperatorProcess {
 public:
  OperatorProcess(const std::vector<std::string>& args) {
    int fds[2];
    if (pipe(fds) != 0) return;
    pid_ = fork();
    if (pid_ == 0) {
      dup2(fds[1], STDERR_FILENO);
      close(fds[0]);
      close(fds[1]);
      std::vector<char*> argv;
      static std::string bin = BATON_OPERATOR_BIN;
      argv.push_back(bin.data());
      for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
      argv.push_back(nullptr);
      execv(argv[0], argv.data());
      _exit(127);
    }
    close(fds[1]);
    err_ = fdopen(fds[0], "r");
  }
  ~OperatorProcess() {
    if (pid_ > 0 && !exited_) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    if (err_ != nullptr) fclose(err_);
  }
  // Reads stderr until a line contains `text`; returns that line.
  std::string WaitForLine(const std::string& text) {
    char line[4096];
    while (err_ != nullptr && fgets(line, sizeof(line), err_) != nullptr) {
      log_ += line;
      if (std::string(line).find(text) != std::string::npos) return line;
    }
    return "";
  }
  // Sends `sig` and waits up to `timeout` for the exit status (-1: none).
  int SignalAndWait(int sig, absl::Duration timeout) {
    kill(pid_, sig);
    const absl::Time deadline = absl::Now() + timeout;
    int status = 0;
    while (absl::Now() < deadline) {
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        exited_ = true;
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      }
      absl::SleepFor(absl::Milliseconds(10));
    }
    return -1;
  }
  const std::string& log() const { return log_; }

 private:
  pid_t pid_ = -1;
  FILE* err_ = nullptr;
  bool exited_ = false;
  std::string log_;
};

TEST(OperatorProcessTest, RunsFromAKubeconfigAndShutsDownGracefully) {
  auto server = FakeApiServer::Start();
  ASSERT_NE(server, nullptr);
  char dir[] = "/tmp/baton-proc-XXXXXX";
  ASSERT_NE(mkdtemp(dir), nullptr);
  const std::string kubeconfig = std::string(dir) + "/config";
  std::ofstream(kubeconfig) << absl::StrCat(R"(apiVersion: v1
kind: Config
clusters:
- name: fake
  cluster:
    server: http://127.0.0.1:)",
                                            server->port(), R"(
users:
- name: test
  user:
    token: )",
                                            FakeApiServer::kToken, R"(
contexts:
- name: fake
  context: {cluster: fake, user: test, namespace: ops}
current-context: fake
)");
  server->Create("batonservices", "llm", Json::parse(R"({"metadata": {"name": "demo"},
                   "spec": {"image": "baton:1", "model": {"hostPath": {"path": "/m"}}}})"));

  {
    OperatorProcess op({"--kubeconfig", kubeconfig, "--metrics-bind-address=127.0.0.1:0",
                        "--leader-elect=true", "--workers=1"});
    const std::string line = op.WaitForLine("serving /metrics");
    ASSERT_FALSE(line.empty()) << op.log();
    int port = 0;
    ASSERT_TRUE(absl::SimpleAtoi(line.substr(line.rfind(':') + 1), &port)) << line;

    // It leads (the Lease in the kubeconfig's namespace) and reconciles.
    ASSERT_TRUE(Eventually([&] {
      return server->Get("deployments", "llm", "demo-decode").has_value();
    })) << op.log();
    std::optional<Json> lease = server->Get("leases", "ops", "baton-operator");
    ASSERT_TRUE(lease.has_value());
    EXPECT_FALSE(GetString(*lease, {"spec", "holderIdentity"}).empty());

    HttpClient http;
    auto get = [&](const std::string& path) {
      HttpClientRequest req;
      req.url = absl::StrCat("http://127.0.0.1:", port, path);
      absl::StatusOr<HttpClientResponse> r = http.Do(req);
      return r.ok() ? *r : HttpClientResponse{};
    };
    EXPECT_EQ(get("/healthz").status, 200);
    ASSERT_TRUE(Eventually([&] { return get("/readyz").status == 200; }));
    ASSERT_TRUE(Eventually(
        [&] { return get("/metrics").body.find("baton_operator_leader 1") != std::string::npos; }));
    EXPECT_THAT(get("/metrics").body, HasSubstr("baton_operator_reconcile_total"));

    // SIGTERM: exit 0 promptly, the Lease released for a standby.
    EXPECT_EQ(op.SignalAndWait(SIGTERM, absl::Seconds(10)), 0) << op.log();
    lease = server->Get("leases", "ops", "baton-operator");
    ASSERT_TRUE(lease.has_value());
    EXPECT_EQ(GetString(*lease, {"spec", "holderIdentity"}), "");
  }
  {
    // A bad flag: usage and exit 2; no API server needed.
    OperatorProcess op({"--no-such-flag=1"});
    EXPECT_EQ(op.SignalAndWait(0, absl::Seconds(10)), 2);
  }
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace baton::op
