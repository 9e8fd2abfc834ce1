// A network namespace for one test, with its loopback up, deleted at the end.
#pragma once

#include "test/support/process.hpp"

#include <catch2/catch.hpp>

#include <unistd.h>

#include <string>
#include <vector>

namespace test_support {

struct Namespace {
    std::string name;
    std::vector<std::string> exec;  // the prefix that runs a command inside it

    explicit Namespace(const std::string& prefix)
        : name(prefix + "-" + std::to_string(::getpid())), exec{"/usr/sbin/ip", "netns", "exec", name}
    {
        run({"/usr/sbin/ip", "netns", "del", name});  // left over from a run that was killed
        REQUIRE(run({"/usr/sbin/ip", "netns", "add", name}).exit_code == 0);
        REQUIRE(in({"/usr/sbin/ip", "link", "set", "lo", "up"}).exit_code == 0);
    }
    ~Namespace() { run({"/usr/sbin/ip", "netns", "del", name}); }
    Namespace(const Namespace&) = delete;
    Namespace& operator=(const Namespace&) = delete;

    std::vector<std::string> wrap(std::vector<std::string> argv) const
    {
        argv.insert(argv.begin(), exec.begin(), exec.end());
        return argv;
    }
    RunResult in(std::vector<std::string> argv, const std::string& input = {}) const { return run(wrap(std::move(argv)), input); }
};

}  // namespace test_support
