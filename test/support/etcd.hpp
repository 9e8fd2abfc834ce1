// Real etcd clusters for tests: members on 127.0.0.1 with ports the kernel had free, data in a
// temporary directory, optionally TLS (a private CA, server and client certificates) and auth
// (user root). Each member's log is <dir>/m<i>.log.
#pragma once

#include "test/support/process.hpp"
#include "test/support/tempdir.hpp"

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace test_support {

struct EtcdOptions {
    int members = 3;
    bool tls = false;
    bool client_cert_auth = false;  // with tls: members require a client certificate
    std::string root_password;      // non-empty: auth enabled, user root with this password
};

class EtcdCluster {
public:
    // Starts every member and waits (at most 15 s) until the cluster has a leader and takes a
    // put; throws when it does not.
    explicit EtcdCluster(EtcdOptions options = {});
    ~EtcdCluster();  // kills every member; the directory goes with it
    EtcdCluster(const EtcdCluster&) = delete;
    EtcdCluster& operator=(const EtcdCluster&) = delete;

    std::vector<std::string> endpoints() const;  // client URLs, http://127.0.0.1:PORT or https://...
    std::string endpoint(int i) const;
    void kill(int i);   // SIGKILL member i and reap it
    void start(int i);  // restarts member i on its data dir and ports; waits until it is healthy
    void stop_all();
    // SIGSTOP / SIGCONT member i: to the others it is gone, its sockets stay open.
    void pause(int i);
    void resume(int i);
    void start_all();  // and waits as the constructor does
    bool running(int i) const;
    std::int64_t revision();  // the cluster's revision now, read from a running member
    void compact();           // compacts at the current revision, physically
    std::string ca_file() const;
    std::string client_cert_file() const;
    std::string client_key_file() const;
    std::string dir() const;

    // Runs etcdctl against the running members with this cluster's TLS and root user.
    RunResult etcdctl(const std::vector<std::string>& args) const;

private:
    struct Member {
        std::string name;
        int client_port = 0;
        int peer_port = 0;
        int starts = 0;
        std::unique_ptr<Child> process;
    };
    void spawn(int i);
    std::vector<std::string> member_args(int i) const;
    void wait_ready(const std::vector<int>& members);
    std::vector<std::string> running_endpoints() const;

    EtcdOptions options_;
    TempDir dir_;
    std::vector<Member> members_;
    std::string token_;
};

}  // namespace test_support
