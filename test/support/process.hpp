// Running the real binaries from tests.
#pragma once

#include <map>
#include <string>
#include <vector>

namespace test_support {

// A file's whole content; empty when it cannot be read.
std::string file_text(const std::string& path);

// name -> VIP of every VIP in use, from what `mesctl get vips -o json` printed; a name seen
// twice makes the test fail.
std::map<std::string, std::string> vips_in_use(const std::string& json);

struct RunResult {
    int exit_code = -1;  // -1 when killed by a signal
    std::string out;
    std::string err;
};

// Runs `argv` to completion with stdin from /dev/null (or `input` when given) and
// returns what it printed. `env` entries ("KEY=VALUE") are added to this environment.
RunResult run(const std::vector<std::string>& argv, const std::string& input = {},
              const std::vector<std::string>& env = {});

#ifdef MESCTL_PATH
// mesctl run with `--config config` ahead of `args`.
inline RunResult mesctl_with(const std::string& config, std::vector<std::string> args)
{
    args.insert(args.begin(), {MESCTL_PATH, "--config", config});
    return run(args);
}
#endif

// A process started in the background, its output going to files.
class Child {
public:
    // Starts `argv` with stdout and stderr written to `out_path` and `err_path`.
    Child(const std::vector<std::string>& argv, const std::string& out_path = "/dev/null",
          const std::string& err_path = "/dev/null", const std::vector<std::string>& env = {});
    Child(const Child&) = delete;
    Child& operator=(const Child&) = delete;
    ~Child();  // kills and reaps it if still running

    int pid() const { return pid_; }
    void signal(int sig);
    // Waits for the exit; the code, or -signal when killed by one.
    int wait();

private:
    int pid_ = -1;
    bool reaped_ = false;
    int status_ = 0;
};

}  // namespace test_support
