// mesd nodes of one cluster for tests: each a real mesd with its own store and a config
// naming the test's etcd, and mesctl run with that node's config.
#pragma once

#include "test/support/etcd.hpp"
#include "test/support/mesd.hpp"
#include "test/support/process.hpp"
#include "test/support/resources.hpp"
#include "test/support/tempdir.hpp"

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

namespace test_support {

// Calls `done` until it says yes or `limit` has passed.
inline bool wait_until(std::chrono::milliseconds limit, const std::function<bool()>& done,
                       std::chrono::milliseconds every = std::chrono::milliseconds(20))
{
    auto deadline = std::chrono::steady_clock::now() + limit;
    for (;;) {
        if (done()) return true;
        if (std::chrono::steady_clock::now() >= deadline) return false;
        std::this_thread::sleep_for(every);
    }
}

// The value of an unlabelled metric on a /metrics page; -1 when absent.
std::int64_t metric_value(const std::string& page, const std::string& name);

struct FleetOptions {
    std::string vip_section = "  ipv4: 127.242.0.0/16\n";
    std::string etcd_extra;  // lines under `cluster.etcd:` (indented four spaces)
    std::string extra_config;
};

class Fleet {
public:
    Fleet(const EtcdCluster& etcd, int nodes, FleetOptions options = {});

    Mesd& node(int n) { return *nodes_.at(static_cast<std::size_t>(n)); }
    // The cluster configuration of node `n` (for mesctl, or a restart).
    std::string config(int n) const;
    std::string data_dir(int n) const;
    // mesctl with node n's configuration.
    RunResult ctl(int n, std::vector<std::string> args) const;
    // Writes `yaml` to a file and applies it with node n's configuration.
    RunResult apply(int n, const std::string& yaml) const;
    // Stops node n (SIGTERM) or kills it (SIGKILL); start() brings it back on the same store.
    void stop(int n);
    void kill(int n);
    void start(int n);
    // dig +short on node n until it answers `want` (any non-empty answer when `want` is
    // the default) or 10 s pass; returns the last answer.
    std::string wait_for_answer(int n, const std::string& name, const char* want = nullptr);
    std::string dig(int n, const std::string& name) const;
    const TempDir& dir() const { return dir_; }

private:
    MesdOptions mesd_options(int n) const;
    const EtcdCluster& etcd_;
    FleetOptions options_;
    TempDir dir_;
    std::vector<std::unique_ptr<Mesd>> nodes_;
};

}  // namespace test_support
