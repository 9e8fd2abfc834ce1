#include "test/support/etcd.hpp"

#include "test/support/certs.hpp"
#include "test/support/net.hpp"

#include <nlohmann/json.hpp>

#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <stdexcept>
#include <thread>

namespace test_support {

namespace {

std::string scheme(const EtcdOptions& options) { return options.tls ? "https://" : "http://"; }

std::string join(const std::vector<std::string>& parts)
{
    std::string out;
    for (const auto& p : parts) out += (out.empty() ? "" : ",") + p;
    return out;
}

}  // namespace

EtcdCluster::EtcdCluster(EtcdOptions options) : options_(std::move(options))
{
    token_ = "mesd-test-" + std::to_string(::getpid()) + "-" + dir_.path.filename().string();
    if (options_.tls) {
        auto ca = make_ca("mesd test etcd CA");
        // Client usage too: with --client-cert-auth, etcd's gateway presents this certificate
        // to its own gRPC port.
        auto server = make_server_and_client_leaf(ca, "etcd", {"IP:127.0.0.1", "DNS:localhost"});
        auto client = make_leaf(ca, "root", {}, -1, 365, true);
        dir_.write("ca.pem", ca.cert_pem);
        dir_.write("server.pem", server.cert_pem);
        dir_.write("server-key.pem", server.key_pem);
        dir_.write("client.pem", client.cert_pem);
        dir_.write("client-key.pem", client.key_pem);
    }
    for (int i = 0; i < options_.members; ++i) {
        Member m;
        m.name = "m" + std::to_string(i);
        m.client_port = free_tcp_port();
        m.peer_port = free_tcp_port();
        members_.push_back(std::move(m));
    }
    start_all();
    if (!options_.root_password.empty()) {
        etcdctl({"role", "add", "root"});
        for (const auto& args : std::vector<std::vector<std::string>>{
                 {"user", "add", "root:" + options_.root_password},
                 {"user", "grant-role", "root", "root"},
                 {"auth", "enable"}}) {
            auto r = etcdctl(args);
            if (r.exit_code != 0) throw std::runtime_error("etcdctl " + args[0] + " " + args[1] + ": " + r.err);
        }
    }
}

EtcdCluster::~EtcdCluster() { stop_all(); }

void EtcdCluster::pause(int i)
{
    auto& m = members_.at(static_cast<std::size_t>(i));
    if (m.process) m.process->signal(SIGSTOP);
}

void EtcdCluster::resume(int i)
{
    auto& m = members_.at(static_cast<std::size_t>(i));
    if (m.process) m.process->signal(SIGCONT);
}

std::vector<std::string> EtcdCluster::member_args(int i) const
{
    const auto& m = members_[static_cast<std::size_t>(i)];
    std::vector<std::string> peers;
    for (const auto& p : members_) peers.push_back(p.name + "=http://127.0.0.1:" + std::to_string(p.peer_port));
    std::string client_url = endpoint(i);
    std::vector<std::string> args = {
        "etcd",
        "--name", m.name,
        "--data-dir", dir() + "/" + m.name + ".etcd",
        "--listen-client-urls", client_url,
        "--advertise-client-urls", client_url,
        "--listen-peer-urls", "http://127.0.0.1:" + std::to_string(m.peer_port),
        "--initial-advertise-peer-urls", "http://127.0.0.1:" + std::to_string(m.peer_port),
        "--initial-cluster", join(peers),
        "--initial-cluster-state", "new",
        "--initial-cluster-token", token_,
        // Elections within a second on loopback, so failover tests stay short.
        "--heartbeat-interval", "50",
        "--election-timeout", "500",
        "--quota-backend-bytes", std::to_string(256 << 20),
        "--logger", "zap",
    };
    if (options_.tls) {
        args.insert(args.end(), {"--cert-file", dir() + "/server.pem", "--key-file", dir() + "/server-key.pem"});
        // etcd 3.4 asks every client for a certificate once it has a trusted CA, whatever
        // --client-cert-auth says: the CA goes only with it.
        if (options_.client_cert_auth) args.insert(args.end(), {"--trusted-ca-file", ca_file(), "--client-cert-auth"});
    }
    // posix_spawn wants a path.
    args[0] = "/usr/bin/etcd";
    return args;
}

std::vector<std::string> EtcdCluster::endpoints() const
{
    std::vector<std::string> out;
    for (int i = 0; i < static_cast<int>(members_.size()); ++i) out.push_back(endpoint(i));
    return out;
}

std::string EtcdCluster::endpoint(int i) const
{
    return scheme(options_) + "127.0.0.1:" + std::to_string(members_.at(static_cast<std::size_t>(i)).client_port);
}

std::vector<std::string> EtcdCluster::running_endpoints() const
{
    std::vector<std::string> out;
    for (int i = 0; i < static_cast<int>(members_.size()); ++i)
        if (running(i)) out.push_back(endpoint(i));
    return out;
}

RunResult EtcdCluster::etcdctl(const std::vector<std::string>& args) const
{
    std::vector<std::string> argv = {"/usr/bin/etcdctl", "--endpoints=" + join(running_endpoints()),
                                     "--dial-timeout=2s", "--command-timeout=3s"};
    if (options_.tls) {
        argv.push_back("--cacert=" + ca_file());
        argv.push_back("--cert=" + client_cert_file());
        argv.push_back("--key=" + client_key_file());
    }
    if (!options_.root_password.empty()) argv.push_back("--user=root:" + options_.root_password);
    argv.insert(argv.end(), args.begin(), args.end());
    return run(argv, {}, {"ETCDCTL_API=3"});
}

void EtcdCluster::wait_ready(const std::vector<int>& members)
{
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(15);
    std::vector<std::string> urls;
    for (int i : members) urls.push_back(endpoint(i));
    std::string last;
    while (std::chrono::steady_clock::now() < deadline) {
        // Health checks each member for a leader; the put proves the cluster commits.
        std::vector<std::string> health = {"endpoint", "health", "--endpoints=" + join(urls)};
        auto h = etcdctl(health);
        if (h.exit_code == 0) {
            auto p = etcdctl({"put", "/mesd-test/ready", "1"});
            if (p.exit_code == 0) return;
            last = p.err;
        } else {
            last = h.err + h.out;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    throw std::runtime_error("etcd cluster in " + dir() + " not ready within 15 s: " + last);
}

void EtcdCluster::kill(int i) { members_.at(static_cast<std::size_t>(i)).process.reset(); }

void EtcdCluster::spawn(int i)
{
    auto& m = members_.at(static_cast<std::size_t>(i));
    if (m.process) return;
    // A log per start (m0.log, m0.log.1, ...): Child truncates its output file.
    auto log = dir() + "/" + m.name + ".log" + (m.starts > 0 ? "." + std::to_string(m.starts) : "");
    ++m.starts;
    m.process = std::make_unique<Child>(member_args(i), "/dev/null", log);
}

void EtcdCluster::start(int i)
{
    spawn(i);
    wait_ready({i});
}

void EtcdCluster::stop_all()
{
    for (auto& m : members_) m.process.reset();
}

void EtcdCluster::start_all()
{
    std::vector<int> all;
    for (int i = 0; i < static_cast<int>(members_.size()); ++i) {
        spawn(i);
        all.push_back(i);
    }
    wait_ready(all);
}

bool EtcdCluster::running(int i) const { return members_.at(static_cast<std::size_t>(i)).process != nullptr; }

std::int64_t EtcdCluster::revision()
{
    auto r = etcdctl({"get", "/mesd-test/ready", "-w", "json"});
    if (r.exit_code != 0) throw std::runtime_error("etcdctl get: " + r.err);
    auto j = nlohmann::json::parse(r.out);
    return j.at("header").at("revision").get<std::int64_t>();
}

void EtcdCluster::compact()
{
    auto rev = revision();
    auto r = etcdctl({"compact", std::to_string(rev), "--physical"});
    if (r.exit_code != 0) throw std::runtime_error("etcdctl compact: " + r.err);
}

std::string EtcdCluster::ca_file() const { return dir() + "/ca.pem"; }
std::string EtcdCluster::client_cert_file() const { return dir() + "/client.pem"; }
std::string EtcdCluster::client_key_file() const { return dir() + "/client-key.pem"; }
std::string EtcdCluster::dir() const { return dir_.path.string(); }

}  // namespace test_support
