#pragma once
// Child processes for end-to-end tests: the real binaries, output to a log file each.
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace fl::testing_util {

struct CommandResult {
  int code;            // the exit status; -1 when it did not exit normally
  std::string output;  // what it wrote to stdout (add 2>&1 to the command for stderr too)
};

// Runs a shell command line to completion.
inline CommandResult run_command(const std::string& command) {
  CommandResult r{-1, {}};
  FILE* p = popen(command.c_str(), "r");
  if (!p) return r;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) r.output.append(buf, n);
  const int status = pclose(p);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

class Process {
 public:
  Process(const std::vector<std::string>& argv, const std::string& log_path) : log_(log_path) {
    pid_ = fork();
    if (pid_ < 0) throw std::runtime_error("fork failed");
    if (pid_ == 0) {
      const int fd = open(log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      dup2(fd, 1);
      dup2(fd, 2);
      std::vector<char*> args;
      for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
      args.push_back(nullptr);
      execv(args[0], args.data());
      _exit(127);
    }
  }
  Process(const Process&) = delete;
  ~Process() {
    if (running()) {
      ::kill(pid_, SIGKILL);
      wait_for(std::chrono::seconds(5));
    }
  }
  bool running() { return pid_ > 0 && !exited_ && poll(); }
  void signal(int sig) { if (pid_ > 0 && !exited_) ::kill(pid_, sig); }
  // Exit code (128 + signal when killed), or -1 when it did not end in time.
  int wait_for(std::chrono::milliseconds timeout) {
    const auto until = std::chrono::steady_clock::now() + timeout;
    while (!exited_ && std::chrono::steady_clock::now() < until) {
      if (!poll()) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return exited_ ? code_ : -1;
  }
  std::string log() const {
    std::ifstream in(log_);
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
  }

 private:
  bool poll() {  // true while running
    int status = 0;
    const pid_t r = waitpid(pid_, &status, WNOHANG);
    if (r == 0) return true;
    exited_ = true;
    code_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    return false;
  }
  pid_t pid_ = -1;
  bool exited_ = false;
  int code_ = -1;
  std::string log_;
};

// A TCP port on 127.0.0.1 that was free a moment ago.
inline int free_port() {
  const int s = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  bind(s, reinterpret_cast<sockaddr*>(&a), sizeof a);
  socklen_t len = sizeof a;
  getsockname(s, reinterpret_cast<sockaddr*>(&a), &len);
  close(s);
  return ntohs(a.sin_port);
}

// A command line run to completion: exit code, stdout, and stderr (via `err_file`).
struct ProgramRun {
  int code = -1;
  std::string out, err;
};

inline ProgramRun run_program(const std::string& command, const std::string& err_file) {
  ProgramRun r;
  auto c = run_command(command + " 2>" + err_file);
  r.code = c.code;
  r.out = std::move(c.output);
  std::ifstream in(err_file);
  std::stringstream e;
  e << in.rdbuf();
  r.err = e.str();
  return r;
}

inline int sh(const std::string& cmd) {
  const int status = std::system(cmd.c_str());
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

}  // namespace fl::testing_util
