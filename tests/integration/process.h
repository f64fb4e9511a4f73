// Starts a real baton process for an integration test and stops it: the
// ports are chosen by the OS (--port 0 --metrics-port 0) and read back from
// the process's "listening on HOST:PORT, metrics on :PORT" line.
#ifndef BATON_TESTS_INTEGRATION_PROCESS_H_
#define BATON_TESTS_INTEGRATION_PROCESS_H_

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <regex>
#include <string>
#include <thread>
#include <vector>

namespace baton::testing {

class Process {
 public:
  // Runs `args` (args[0] is the program) with stdout captured.
  explicit Process(std::vector<std::string> args) {
    int out[2];
    if (pipe(out) != 0) return;
    pid_ = fork();
    if (pid_ == 0) {
      dup2(out[1], STDOUT_FILENO);
      close(out[0]);
      close(out[1]);
      std::vector<char*> argv;
      for (std::string& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      execv(argv[0], argv.data());
      _exit(127);
    }
    close(out[1]);
    stdout_fd_ = out[0];
  }
  ~Process() {
    if (pid_ > 0 && !exited_) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    if (stdout_fd_ >= 0) close(stdout_fd_);
  }
  Process(const Process&) = delete;
  Process& operator=(const Process&) = delete;

  // Reads stdout until a line matches `pattern` (or the timeout passes);
  // returns the first capture group, or "" on timeout.
  std::string WaitForLine(const std::string& pattern, std::chrono::milliseconds timeout) {
    const std::regex re(pattern);
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline) {
      size_t nl;
      while ((nl = buffer_.find('\n')) != std::string::npos) {
        std::string line = buffer_.substr(0, nl);
        buffer_.erase(0, nl + 1);
        output_ += line + "\n";
        std::smatch m;
        if (std::regex_search(line, m, re)) return m.size() > 1 ? m[1].str() : line;
      }
      pollfd p{stdout_fd_, POLLIN, 0};
      if (poll(&p, 1, 50) > 0) {
        char chunk[4096];
        ssize_t n = read(stdout_fd_, chunk, sizeof chunk);
        if (n <= 0) break;
        buffer_.append(chunk, n);
      }
    }
    return "";
  }

  void Signal(int signal) { kill(pid_, signal); }
  // Waits for exit; returns the exit code, or -1 on timeout or death by signal.
  int Wait(std::chrono::milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline) {
      int status;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        exited_ = true;
        return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return -1;
  }
  pid_t pid() const { return pid_; }
  const std::string& output() const { return output_; }

 private:
  pid_t pid_ = -1;
  int stdout_fd_ = -1;
  bool exited_ = false;
  std::string buffer_;
  std::string output_;
};

// A `baton SUBCOMMAND` (serve, prefill, decode, router) on 127.0.0.1 with
// OS-chosen ports.
class BatonProcess {
 public:
  BatonProcess(const std::string& subcommand, std::vector<std::string> extra) {
    std::vector<std::string> args = {BATON_BIN, subcommand, "--host",         "127.0.0.1",
                                     "--port",  "0",        "--metrics-port", "0"};
    args.insert(args.end(), extra.begin(), extra.end());
    process_ = std::make_unique<Process>(args);
    const std::string line = process_->WaitForLine("(listening on .*)", std::chrono::seconds(60));
    std::smatch m;
    static const std::regex re("listening on ([0-9.]+):([0-9]+), metrics on :([0-9]+)");
    if (std::regex_search(line, m, re)) {
      address_ = m[1].str() + ":" + m[2].str();
      metrics_port_ = std::stoi(m[3].str());
    }
  }
  bool ok() const { return !address_.empty(); }
  const std::string& address() const { return address_; }
  int metrics_port() const { return metrics_port_; }
  Process& process() { return *process_; }

 private:
  std::unique_ptr<Process> process_;
  std::string address_;
  int metrics_port_ = 0;
};

// A `baton serve` of `model_dir`.
class BatonServer : public BatonProcess {
 public:
  explicit BatonServer(const std::string& model_dir, std::vector<std::string> extra = {})
      : BatonProcess("serve", WithModel(model_dir, std::move(extra))) {}
  static std::vector<std::string> WithModel(const std::string& dir,
                                            std::vector<std::string> extra) {
    extra.insert(extra.begin(), {"--model", dir});
    return extra;
  }
};

// The text of http://127.0.0.1:PORT/PATH (a tiny HTTP/1.0 client).
std::string HttpGet(int port, const std::string& path);

// Polls grpc.health.v1 at `address` until it stops reporting SERVING (a
// draining process says so first), so that a test acts inside the drain
// window rather than after a guessed delay. False after ~2 s of SERVING.
bool WaitUntilNotServing(const std::string& address);

}  // namespace baton::testing

#endif  // BATON_TESTS_INTEGRATION_PROCESS_H_
