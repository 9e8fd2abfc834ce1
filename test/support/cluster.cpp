#include "test/support/cluster.hpp"

#include <csignal>
#include <regex>
#include <sstream>

namespace test_support {

std::int64_t metric_value(const std::string& page, const std::string& name)
{
    std::istringstream in(page);
    std::string line;
    while (std::getline(in, line))
        if (line.starts_with(name + " ")) return std::stoll(line.substr(name.size() + 1));
    return -1;
}

Fleet::Fleet(const EtcdCluster& etcd, int nodes, FleetOptions options) : etcd_(etcd), options_(std::move(options))
{
    for (int n = 0; n < nodes; ++n) nodes_.push_back(std::make_unique<Mesd>(dir_.path / ("node-" + std::to_string(n)), mesd_options(n)));
}

MesdOptions Fleet::mesd_options(int n) const
{
    std::string endpoints;
    for (const auto& e : etcd_.endpoints()) endpoints += (endpoints.empty() ? "" : ", ") + std::string("\"") + e + "\"";
    MesdOptions o;
    o.vip_section = options_.vip_section;
    o.extra_config = "cluster:\n  nodeName: node-" + std::to_string(n) + "\n  etcd:\n    endpoints: [" + endpoints + "]\n" +
                     options_.etcd_extra + options_.extra_config;
    return o;
}

std::string Fleet::config(int n) const { return (dir_.path / ("node-" + std::to_string(n)) / "mesd.yaml").string(); }

std::string Fleet::data_dir(int n) const { return (dir_.path / ("node-" + std::to_string(n)) / "data").string(); }

RunResult Fleet::ctl(int n, std::vector<std::string> args) const
{
    args.insert(args.begin(), {MESCTL_PATH, "--config", config(n)});
    return run(args);
}

RunResult Fleet::apply(int n, const std::string& yaml) const
{
    static int counter = 0;
    auto file = dir_.write("apply-" + std::to_string(++counter) + ".yaml", yaml);
    return ctl(n, {"apply", "-f", file});
}

void Fleet::stop(int n) { nodes_.at(static_cast<std::size_t>(n))->stop(); }

void Fleet::kill(int n)
{
    auto& node = nodes_.at(static_cast<std::size_t>(n));
    ::kill(node->pid(), SIGKILL);
    node->stop();  // reaps it
}

void Fleet::start(int n)
{
    auto& node = nodes_.at(static_cast<std::size_t>(n));
    node.reset();
    node = std::make_unique<Mesd>(dir_.path / ("node-" + std::to_string(n)), mesd_options(n));
}

// Two tries of 2 s: a node on a loaded machine may miss a single 1 s window, which says
// nothing about whether it answers.
std::string Fleet::dig(int n, const std::string& name) const
{
    auto r = run({"/usr/bin/dig", "@127.0.0.1", "-p", std::to_string(nodes_.at(static_cast<std::size_t>(n))->dns_port()),
                  "+tries=2", "+time=2", "+short", name, "A"});
    auto out = r.out;
    while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) out.pop_back();
    return out;
}

std::string Fleet::wait_for_answer(int n, const std::string& name, const char* want)
{
    std::string last;
    wait_until(std::chrono::seconds(10), [&] {
        last = dig(n, name);
        return want ? last == want : !last.empty();
    });
    return last;
}

}  // namespace test_support
