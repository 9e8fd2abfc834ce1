#include "test/support/process.hpp"

#include <catch2/catch.hpp>

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <regex>
#include <sstream>
#include <stdexcept>

extern char** environ;

namespace test_support {

namespace {

std::string slurp(const std::string& path)
{
    std::ifstream in(path, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

}  // namespace

namespace {

std::vector<std::string> environment_with(const std::vector<std::string>& env)
{
    std::vector<std::string> out;
    for (char** e = environ; *e; ++e) out.emplace_back(*e);
    for (const auto& e : env) out.push_back(e);
    return out;
}

pid_t spawn(const std::vector<std::string>& argv, const std::string& in_path, const std::string& out_path,
            const std::string& err_path, const std::vector<std::string>& env)
{
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 0, in_path.c_str(), O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&actions, 1, out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    posix_spawn_file_actions_addopen(&actions, 2, err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    auto env_strings = environment_with(env);
    std::vector<char*> envp;
    for (auto& e : env_strings) envp.push_back(e.data());
    envp.push_back(nullptr);
    pid_t pid = 0;
    int rc = posix_spawn(&pid, args[0], &actions, nullptr, args.data(), envp.data());
    posix_spawn_file_actions_destroy(&actions);
    if (rc != 0) throw std::runtime_error("cannot start " + argv.at(0));
    return pid;
}

int decode_status(int status) { return WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status); }

}  // namespace

Child::Child(const std::vector<std::string>& argv, const std::string& out_path, const std::string& err_path,
             const std::vector<std::string>& env)
    : pid_(spawn(argv, "/dev/null", out_path, err_path, env))
{
}

Child::~Child()
{
    if (!reaped_) {
        ::kill(pid_, SIGKILL);
        wait();
    }
}

void Child::signal(int sig)
{
    if (!reaped_) ::kill(pid_, sig);
}

int Child::wait()
{
    if (!reaped_) {
        waitpid(pid_, &status_, 0);
        reaped_ = true;
    }
    return decode_status(status_);
}

RunResult run(const std::vector<std::string>& argv, const std::string& input,
              const std::vector<std::string>& env)
{
    char dir_template[] = "/tmp/mesd-run-XXXXXX";
    std::string dir = mkdtemp(dir_template);
    std::string in_path = dir + "/in", out_path = dir + "/out", err_path = dir + "/err";
    std::ofstream(in_path, std::ios::binary) << input;

    pid_t pid = spawn(argv, in_path, out_path, err_path, env);
    int status = 0;
    waitpid(pid, &status, 0);

    RunResult result;
    result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    result.out = slurp(out_path);
    result.err = slurp(err_path);
    unlink(in_path.c_str());
    unlink(out_path.c_str());
    unlink(err_path.c_str());
    rmdir(dir.c_str());
    return result;
}

std::string file_text(const std::string& path)
{
    std::ifstream in(path, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

std::map<std::string, std::string> vips_in_use(const std::string& json)
{
    std::map<std::string, std::string> out;
    std::regex item(R"re("ip": "([^"]+)",\s*"state": "inUse",\s*"mesh": "([^"]+)",\s*"name": "([^"]+)")re");
    for (std::sregex_iterator it(json.begin(), json.end(), item), end; it != end; ++it) {
        auto [pos, inserted] = out.emplace((*it)[3].str(), (*it)[1].str());
        CHECK(inserted);
    }
    return out;
}

}  // namespace test_support
