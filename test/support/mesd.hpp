// A real mesd started for a test: its own data dir and config, ports chosen by the kernel
// (read back from its log), stopped with SIGTERM at the end.
#pragma once

#include "test/support/process.hpp"

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

namespace test_support {

struct MesdOptions {
    std::string extra_config;           // appended to the generated config (YAML, top level)
    std::string vip_section = "  ipv4: 127.242.0.0/16\n";  // lines under `vip:`
    std::string dns_section;            // lines under `dns:` (indented two spaces)
    std::string conf_dir;               // --conf-dir when not empty
    std::vector<std::string> wrapper;   // e.g. {"ip", "netns", "exec", "ns"} to run inside a namespace
    std::string dns_listen = "127.0.0.1:0";
    std::vector<std::string> extra_args;  // more flags (`--workers 4`; a flag wins over MESD_WORKERS)
};

class Mesd {
public:
    explicit Mesd(const std::filesystem::path& dir, MesdOptions options = {});
    ~Mesd();

    int dns_port() const { return dns_port_; }
    int admin_port() const { return admin_port_; }
    int pid() const;
    const std::string& config() const { return config_; }
    std::string log() const;
    // Sends SIGTERM and returns the exit code.
    int stop();
    // An HTTP GET against the admin endpoint: the whole response, headers included.
    std::string admin_get(const std::string& path) const;

private:
    std::filesystem::path dir_;
    std::string config_;
    std::string log_path_;
    std::unique_ptr<Child> child_;
    int dns_port_ = 0;
    int admin_port_ = 0;
};

// Runs a command and returns its stdout; the test fails when it cannot start.
std::string output_of(const std::vector<std::string>& argv);

}  // namespace test_support
