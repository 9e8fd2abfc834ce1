// The etcd client against real etcd members started by test_support::EtcdCluster.
#include "store/etcd.hpp"

#include "test/support/etcd.hpp"
#include "test/support/net.hpp"
#include "test/support/process.hpp"

#include <catch2/catch.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <mutex>
#include <thread>

// Requests are written with designated initializers naming only the fields a case sets; the
// rest keep their documented defaults.
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"

using namespace std::chrono_literals;
using store::etcd::Client;
using store::etcd::Compare;
using store::etcd::Operation;
using store::etcd::WatchEvent;
using store::etcd::WatchResponse;
using test_support::EtcdCluster;
using test_support::EtcdOptions;

namespace {

std::unique_ptr<Client> connect(const EtcdCluster& cluster, store::etcd::Options options = {})
{
    options.endpoints = cluster.endpoints();
    auto client = Client::connect(options);
    if (!client) FAIL("connect: " << client.error().message);
    return std::move(*client);
}

EtcdCluster one_member(EtcdOptions options = {})
{
    options.members = 1;
    return EtcdCluster(options);
}

}  // namespace

TEST_CASE("etcd client: put and range by key and prefix with limit and revision")
{
    auto cluster = one_member();
    auto client = connect(cluster);

    auto r1 = client->put("/p/a", "1");
    REQUIRE(r1);
    auto r2 = client->put("/p/b", "2");
    REQUIRE(r2);
    REQUIRE(*r2 > *r1);
    REQUIRE(client->put("/p/c", "3"));
    REQUIRE(client->put("/q", "outside"));
    REQUIRE(client->put("/p/a", "1 again"));

    auto one = client->range({.key = "/p/a"});
    REQUIRE(one);
    REQUIRE(one->kvs.size() == 1);
    CHECK(one->kvs[0].value == "1 again");
    CHECK(one->kvs[0].version == 2);
    CHECK(one->kvs[0].create_revision == *r1);
    CHECK(one->count == 1);
    CHECK_FALSE(one->more);

    auto missing = client->range({.key = "/nothing"});
    REQUIRE(missing);
    CHECK(missing->kvs.empty());
    CHECK(missing->count == 0);
    CHECK(missing->revision == one->revision);

    auto all = client->range({.key = "/p/", .range_end = store::etcd::prefix_end("/p/")});
    REQUIRE(all);
    REQUIRE(all->kvs.size() == 3);
    CHECK(all->kvs[0].key == "/p/a");
    CHECK(all->kvs[2].key == "/p/c");

    auto limited = client->range({.key = "/p/", .range_end = store::etcd::prefix_end("/p/"), .limit = 2});
    REQUIRE(limited);
    CHECK(limited->kvs.size() == 2);
    CHECK(limited->more);
    CHECK(limited->count == 3);

    // At the revision of the second put, /p/a had its first value and /p/c did not exist.
    auto old = client->range({.key = "/p/", .range_end = store::etcd::prefix_end("/p/"), .revision = *r2});
    REQUIRE(old);
    REQUIRE(old->kvs.size() == 2);
    CHECK(old->kvs[0].value == "1");

    auto keys = client->range({.key = "/p/", .range_end = store::etcd::prefix_end("/p/"), .keys_only = true});
    REQUIRE(keys);
    REQUIRE(keys->kvs.size() == 3);
    CHECK(keys->kvs[0].value.empty());

    auto counted = client->range({.key = "/p/", .range_end = store::etcd::prefix_end("/p/"), .count_only = true});
    REQUIRE(counted);
    CHECK(counted->kvs.empty());
    CHECK(counted->count == 3);

    auto future = client->range({.key = "/p/a", .revision = one->revision + 100});
    REQUIRE_FALSE(future);
    CHECK(future.error().code == 11);  // OUT_OF_RANGE
    CHECK_FALSE(future.error().unavailable);
    CHECK(future.error().message.find("future revision") != std::string::npos);

    CHECK(store::etcd::prefix_end("a\xff") == "b");
    CHECK(store::etcd::prefix_end("\xff") == std::string(1, '\0'));
}

TEST_CASE("etcd client: txn compares succeed and fail with range operations in the failure branch")
{
    auto cluster = one_member();
    auto client = connect(cluster);

    // Create-if-absent: create_revision == 0.
    std::vector<Compare> absent = {{.key = "/vip/10.0.0.1", .target = Compare::Target::create, .number = 0}};
    std::vector<Operation> claim = {{.type = Operation::Type::put, .key = "/vip/10.0.0.1", .value = "web"}};
    std::vector<Operation> read_owner = {{.type = Operation::Type::range, .key = "/vip/10.0.0.1"},
                                         {.type = Operation::Type::range, .key = "/vip/", .range_end = store::etcd::prefix_end("/vip/")}};
    auto first = client->txn(absent, claim, read_owner);
    REQUIRE(first);
    CHECK(first->succeeded);
    CHECK(first->ranges.empty());

    std::vector<Operation> claim_other = {{.type = Operation::Type::put, .key = "/vip/10.0.0.1", .value = "api"}};
    auto second = client->txn(absent, claim_other, read_owner);
    REQUIRE(second);
    CHECK_FALSE(second->succeeded);
    REQUIRE(second->ranges.size() == 2);
    REQUIRE(second->ranges[0].kvs.size() == 1);
    CHECK(second->ranges[0].kvs[0].value == "web");
    CHECK(second->ranges[0].revision == first->revision);
    CHECK(second->ranges[1].count == 1);

    // Compare-and-swap on mod_revision: the current one wins, a stale one loses.
    auto now = client->range({.key = "/vip/10.0.0.1"});
    REQUIRE(now);
    auto mod = now->kvs.at(0).mod_revision;
    std::vector<Operation> update = {{.type = Operation::Type::put, .key = "/vip/10.0.0.1", .value = "web2"},
                                     {.type = Operation::Type::remove, .key = "/vip/none"}};
    auto cas = client->txn({{.key = "/vip/10.0.0.1", .target = Compare::Target::mod, .number = mod}}, update, {});
    REQUIRE(cas);
    CHECK(cas->succeeded);
    CHECK(cas->revision > mod);
    auto stale = client->txn({{.key = "/vip/10.0.0.1", .target = Compare::Target::mod, .number = mod}}, update, read_owner);
    REQUIRE(stale);
    CHECK_FALSE(stale->succeeded);
    REQUIRE(stale->ranges.size() == 2);
    CHECK(stale->ranges[0].kvs.at(0).value == "web2");

    // Value and version compares, and a greater-than.
    auto by_value = client->txn({{.key = "/vip/10.0.0.1", .target = Compare::Target::value, .value = "web2"},
                                 {.key = "/vip/10.0.0.1", .target = Compare::Target::version, .op = Compare::Op::greater, .number = 1}},
                                {{.type = Operation::Type::remove, .key = "/vip/", .range_end = store::etcd::prefix_end("/vip/")}}, {});
    REQUIRE(by_value);
    CHECK(by_value->succeeded);
    auto gone = client->range({.key = "/vip/10.0.0.1"});
    REQUIRE(gone);
    CHECK(gone->kvs.empty());
}

TEST_CASE("etcd client: leases are granted kept alive expire and are revoked")
{
    auto cluster = one_member();
    auto client = connect(cluster);

    auto lease = client->lease_grant(1s);
    REQUIRE(lease);
    CHECK(*lease != 0);
    REQUIRE(client->put("/nodes/a", "up", *lease));
    auto kv = client->range({.key = "/nodes/a"});
    REQUIRE(kv);
    REQUIRE(kv->kvs.size() == 1);
    CHECK(kv->kvs[0].lease == *lease);

    // Kept alive past its TTL, the key stays.
    for (int i = 0; i < 4; ++i) {
        auto ttl = client->lease_keepalive(*lease);
        REQUIRE(ttl);
        CHECK(*ttl >= 1);
        std::this_thread::sleep_for(400ms);
    }
    kv = client->range({.key = "/nodes/a"});
    REQUIRE(kv);
    CHECK(kv->kvs.size() == 1);

    // Left alone, it expires and takes the key with it.
    CHECK(test_support::eventually(
        [&] {
            auto r = client->range({.key = "/nodes/a"});
            return r && r->kvs.empty();
        },
        5s));
    auto expired = client->lease_keepalive(*lease);
    REQUIRE(expired);
    CHECK(*expired == 0);

    // Revoked, its key goes at once.
    auto second = client->lease_grant(60s);
    REQUIRE(second);
    REQUIRE(client->put("/quarantine/10.0.0.9", "", *second));
    REQUIRE(client->lease_revoke(*second));
    auto after = client->range({.key = "/quarantine/10.0.0.9"});
    REQUIRE(after);
    CHECK(after->kvs.empty());
    auto again = client->lease_revoke(*second);
    REQUIRE_FALSE(again);
    CHECK(again.error().message.find("lease not found") != std::string::npos);
}

TEST_CASE("etcd client: binary keys and values round trip")
{
    auto cluster = one_member();
    auto client = connect(cluster);

    std::string every_byte;
    for (int b = 0; b < 256; ++b) every_byte += static_cast<char>(b);
    std::string key = std::string("/bin/\0\xff\x80\n\"\\", 11);
    for (std::size_t n : {0u, 1u, 2u, 3u, 256u}) {
        std::string value = every_byte.substr(0, n);
        auto k = key + std::to_string(n);
        REQUIRE(client->put(k, value));
        auto r = client->range({.key = k});
        REQUIRE(r);
        REQUIRE(r->kvs.size() == 1);
        CHECK(r->kvs[0].key == k);
        CHECK(r->kvs[0].value == value);
    }
    auto all = client->range({.key = "/bin/", .range_end = store::etcd::prefix_end("/bin/")});
    REQUIRE(all);
    CHECK(all->kvs.size() == 5);
}

TEST_CASE("etcd client: watch from a revision sees puts and removals and a txn in one response")
{
    auto cluster = one_member();
    auto client = connect(cluster);
    auto writer = connect(cluster);

    auto start = client->put("/w/before", "1");
    REQUIRE(start);
    REQUIRE(client->put("/outside", "x"));

    std::vector<WatchResponse> responses;
    std::thread writes;
    bool created = false;
    auto started = std::chrono::steady_clock::now();
    auto result = client->watch(
        "/w/", store::etcd::prefix_end("/w/"), *start,
        [&](const WatchResponse& r) {
            responses.push_back(r);
            if (r.created && !created) {
                created = true;
                writes = std::thread([&] {
                    (void)writer->put("/w/a", "A");
                    (void)writer->txn({}, {{.type = Operation::Type::put, .key = "/w/t1", .value = "1"},
                                           {.type = Operation::Type::put, .key = "/w/t2", .value = "2"},
                                           {.type = Operation::Type::remove, .key = "/w/a"}}, {});
                    (void)writer->put("/w/last", "end");
                });
            }
            for (const auto& e : r.events)
                if (e.kv.key == "/w/last") return false;
            return true;
        },
        200ms, [&] { return std::chrono::steady_clock::now() - started < 5s; });
    if (writes.joinable()) writes.join();
    REQUIRE(result);
    REQUIRE(created);

    std::vector<std::pair<WatchEvent::Type, std::string>> events;
    const WatchResponse* txn_response = nullptr;
    for (const auto& r : responses) {
        for (const auto& e : r.events) {
            events.emplace_back(e.type, e.kv.key);
            if (e.kv.key == "/w/t1") txn_response = &r;
        }
    }
    using T = WatchEvent::Type;
    std::vector<std::pair<T, std::string>> expected = {
        {T::put, "/w/before"}, {T::put, "/w/a"}, {T::put, "/w/t1"}, {T::put, "/w/t2"}, {T::remove, "/w/a"}, {T::put, "/w/last"}};
    CHECK(events == expected);
    // The txn's three events share one revision and one response (etcd may add other
    // revisions to it).
    REQUIRE(txn_response);
    std::vector<std::pair<T, std::string>> txn_events;
    std::int64_t txn_revision = 0;
    for (const auto& e : txn_response->events) {
        if (e.kv.key == "/w/t1") txn_revision = e.kv.mod_revision;
    }
    for (const auto& e : txn_response->events)
        if (e.kv.mod_revision == txn_revision) txn_events.emplace_back(e.type, e.kv.key);
    CHECK(txn_events == std::vector<std::pair<T, std::string>>{{T::put, "/w/t1"}, {T::put, "/w/t2"}, {T::remove, "/w/a"}});
    CHECK(txn_response->revision >= txn_revision);
}

TEST_CASE("etcd client: watch from a compacted revision reports the compaction")
{
    auto cluster = one_member();
    auto client = connect(cluster);
    auto first = client->put("/c/a", "1");
    REQUIRE(first);
    for (int i = 0; i < 5; ++i) REQUIRE(client->put("/c/a", std::to_string(i)));
    cluster.compact();

    auto old = client->range({.key = "/c/a", .revision = *first});
    REQUIRE_FALSE(old);
    CHECK(old.error().compacted);

    std::optional<WatchResponse> seen;
    auto result = client->watch(
        "/c/", store::etcd::prefix_end("/c/"), *first,
        [&](const WatchResponse& r) {
            if (r.compact_revision > 0 || r.canceled) {
                seen = r;
                return false;
            }
            return true;
        },
        2s, [] { return false; });
    REQUIRE(result);
    REQUIRE(seen);
    CHECK(seen->compact_revision > *first);
}

TEST_CASE("etcd client: interrupt ends a watch from another thread")
{
    auto cluster = one_member();
    auto client = connect(cluster);
    std::atomic<bool> created = false;
    std::atomic<std::chrono::steady_clock::time_point> interrupted_at{};
    std::thread stopper([&] {
        test_support::eventually([&] { return created.load(); }, 5s);
        interrupted_at = std::chrono::steady_clock::now();
        client->interrupt();
    });
    auto result = client->watch(
        "/i/", store::etcd::prefix_end("/i/"), 0,
        [&](const WatchResponse& r) {
            if (r.created) created = true;
            return true;
        },
        10s, [] { return true; });
    auto returned = std::chrono::steady_clock::now();
    stopper.join();
    CHECK(result);
    REQUIRE(created);
    CHECK(returned - interrupted_at.load() < 1s);
    // The interrupt is final: the client is being shut down, so later calls end at once.
    auto after = client->put("/i/x", "1");
    REQUIRE_FALSE(after);
    CHECK(after.error().message == "etcd: interrupted");
    CHECK(client->watch("/i/", "", 0, [](const WatchResponse&) { return true; }, 10s, [] { return true; }));
}

TEST_CASE("etcd client: a quiet watch calls on_idle which may use the client")
{
    auto cluster = one_member();
    auto client = connect(cluster);
    int idle_calls = 0;
    bool saw_put = false;
    auto started = std::chrono::steady_clock::now();
    auto result = client->watch(
        "/idle/", store::etcd::prefix_end("/idle/"), 0,
        [&](const WatchResponse& r) {
            for (const auto& e : r.events) saw_put = saw_put || e.kv.key == "/idle/ping";
            return !saw_put;
        },
        100ms,
        [&] {
            // The third quiet spell writes, as mesd refreshes its node lease between events.
            if (++idle_calls == 3) return client->put("/idle/ping", "1").has_value();
            return idle_calls < 10;
        });
    auto elapsed = std::chrono::steady_clock::now() - started;
    REQUIRE(result);
    CHECK(saw_put);
    CHECK(idle_calls == 3);
    CHECK(elapsed >= 300ms);
    CHECK(elapsed < 2s);
}

TEST_CASE("etcd client: a member that refuses is named in the error")
{
    int port = test_support::free_tcp_port();
    store::etcd::Options options;
    options.endpoints = {"http://127.0.0.1:" + std::to_string(port)};
    options.request_timeout = 500ms;
    auto started = std::chrono::steady_clock::now();
    auto client = Client::connect(options);
    REQUIRE_FALSE(client);
    CHECK(client.error().unavailable);
    CHECK(client.error().message.find("etcd 127.0.0.1:" + std::to_string(port) + ": Connection refused") != std::string::npos);
    CHECK(std::chrono::steady_clock::now() - started < 1500ms);
}

TEST_CASE("etcd client: failover to another member and unavailable when none answers")
{
    auto cluster = EtcdCluster(EtcdOptions{.members = 3});
    // The client starts on the leader: losing it is the hard case, since the member asked next
    // holds a write until a new leader is elected.
    int leader = -1;
    for (int i = 0; i < 3 && leader < 0; ++i) {
        auto probe = Client::connect({.endpoints = {cluster.endpoint(i)}});
        REQUIRE(probe);
        auto s = (*probe)->status();
        REQUIRE(s);
        if (s->leader == s->member_id) leader = i;
    }
    REQUIRE(leader >= 0);
    store::etcd::Options options;
    options.endpoints = {cluster.endpoint(leader), cluster.endpoint((leader + 1) % 3), cluster.endpoint((leader + 2) % 3)};
    options.request_timeout = 3s;  // answers due within 1 s: an election fits in two tries
    options.dial_timeout = 500ms;
    auto connected = Client::connect(options);
    REQUIRE(connected);
    auto client = std::move(*connected);
    REQUIRE(client->put("/f/a", "1"));
    auto first = client->endpoint();
    CHECK(cluster.endpoint(leader).ends_with(first));
    cluster.kill(leader);

    auto failover_started = std::chrono::steady_clock::now();
    auto put = client->put("/f/b", "2");
    INFO((put ? std::string() : put.error().message));
    REQUIRE(put);
    CHECK(std::chrono::steady_clock::now() - failover_started < options.request_timeout);
    CHECK(client->endpoint() != first);
    auto read = client->range({.key = "/f/", .range_end = store::etcd::prefix_end("/f/")});
    REQUIRE(read);
    CHECK(read->kvs.size() == 2);

    // A watch opened now lands on a live member too, and ends with `unavailable` when that
    // member dies under it.
    std::atomic<bool> created = false;
    std::thread killer([&] {
        test_support::eventually([&] { return created.load(); }, 5s);
        for (int i = 0; i < 3; ++i)
            if (cluster.running(i) && cluster.endpoint(i).ends_with(client->endpoint())) cluster.kill(i);
    });
    auto watch_started = std::chrono::steady_clock::now();
    auto watched = client->watch("/f/", store::etcd::prefix_end("/f/"), 0,
                                 [&](const WatchResponse& r) { created = created || r.created; return true; }, 5s,
                                 [] { return false; });
    killer.join();
    CHECK(created);
    REQUIRE_FALSE(watched);
    CHECK(watched.error().unavailable);
    CHECK(std::chrono::steady_clock::now() - watch_started < 2s);

    cluster.stop_all();
    auto started = std::chrono::steady_clock::now();
    auto down = client->put("/f/c", "3");
    auto elapsed = std::chrono::steady_clock::now() - started;
    REQUIRE_FALSE(down);
    CHECK(down.error().unavailable);
    CHECK(down.error().message.find("etcd 127.0.0.1:") == 0);
    CHECK(elapsed < options.request_timeout + 1s);
    auto no_watch = client->watch("/f/", "", 0, [](const WatchResponse&) { return true; }, 1s, [] { return false; });
    REQUIRE_FALSE(no_watch);
    CHECK(no_watch.error().unavailable);
}

TEST_CASE("etcd client: TLS with a client certificate and without one")
{
    auto cluster = one_member({.tls = true, .client_cert_auth = true});
    store::etcd::Options options;
    options.tls = store::etcd::Tls{cluster.ca_file(), cluster.client_cert_file(), cluster.client_key_file()};
    auto client = connect(cluster, options);
    REQUIRE(client->put("/tls/a", "secret"));
    auto r = client->range({.key = "/tls/a"});
    REQUIRE(r);
    REQUIRE(r->kvs.size() == 1);
    CHECK(r->kvs[0].value == "secret");

    bool created = false;
    REQUIRE(client->watch("/tls/", "", 0, [&](const WatchResponse& w) { created = w.created; return false; }, 2s,
                          [] { return false; }));
    CHECK(created);

    store::etcd::Options no_cert;
    no_cert.endpoints = cluster.endpoints();
    no_cert.tls = store::etcd::Tls{.ca_file = cluster.ca_file()};
    no_cert.request_timeout = 1s;
    auto refused = Client::connect(no_cert);
    REQUIRE_FALSE(refused);
    CHECK(refused.error().message.find("etcd 127.0.0.1:") == 0);
    CHECK(refused.error().message.find("TLS") != std::string::npos);
    INFO(refused.error().message);

    // A CA that did not sign the member's certificate fails verification.
    store::etcd::Options wrong_ca = options;
    wrong_ca.endpoints = cluster.endpoints();
    wrong_ca.tls->ca_file = cluster.client_cert_file();  // a leaf, not the CA
    wrong_ca.request_timeout = 1s;
    auto unverified = Client::connect(wrong_ca);
    REQUIRE_FALSE(unverified);
    CHECK(unverified.error().message.find("certificate verify failed") != std::string::npos);
}

TEST_CASE("etcd client: authentication with a wrong and a right password")
{
    auto cluster = one_member({.root_password = "s3cret"});
    store::etcd::Options wrong;
    wrong.endpoints = cluster.endpoints();
    wrong.username = "root";
    wrong.password = "nope";
    auto refused = Client::connect(wrong);
    REQUIRE_FALSE(refused);
    CHECK_FALSE(refused.error().unavailable);
    CHECK(refused.error().message.find("authentication as root failed") != std::string::npos);
    CHECK(refused.error().message.find("invalid user ID or password") != std::string::npos);

    store::etcd::Options anonymous;
    anonymous.endpoints = cluster.endpoints();
    auto no_user = Client::connect(anonymous);
    REQUIRE(no_user);  // status needs no user
    auto denied = (*no_user)->put("/a/x", "1");
    REQUIRE_FALSE(denied);
    CHECK(denied.error().message.find("user name is empty") != std::string::npos);

    store::etcd::Options right = wrong;
    right.password = "s3cret";
    auto client = connect(cluster, right);
    REQUIRE(client->put("/a/x", "1"));
    auto r = client->range({.key = "/a/x"});
    REQUIRE(r);
    CHECK(r->kvs.size() == 1);
    bool created = false;
    std::vector<std::string> keys;
    REQUIRE(client->watch(
        "/a/", store::etcd::prefix_end("/a/"), 1,
        [&](const WatchResponse& w) {
            created = created || w.created;
            for (const auto& e : w.events) keys.push_back(e.kv.key);
            return keys.empty();
        },
        2s, [] { return false; }));
    CHECK(created);
    CHECK(keys == std::vector<std::string>{"/a/x"});

    // Turning auth off and on drops every token: the client's is refused on its open
    // connection, and it authenticates again once.
    auto off = cluster.etcdctl({"auth", "disable"});
    REQUIRE(off.exit_code == 0);
    auto on = test_support::run({"/usr/bin/etcdctl", "--endpoints=" + cluster.endpoint(0), "auth", "enable"}, {},
                                {"ETCDCTL_API=3"});
    REQUIRE(on.exit_code == 0);
    auto again = client->put("/a/y", "2");
    INFO((again ? std::string() : again.error().message));
    CHECK(again);
}

namespace {

// A stand-in for the gateway on 127.0.0.1: it serves the canned responses in order, one
// connection each, writing every response `step` bytes at a time so that the client's reader
// sees headers, chunk sizes and JSON lines cut at every possible point.
class FakeGateway {
public:
    explicit FakeGateway(std::vector<std::string> responses, std::size_t step = 1)
    {
        listener_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        sockaddr_in addr{};
        addr.sin_family = AF_INET;
        addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        socklen_t len = sizeof addr;
        if (::bind(listener_, reinterpret_cast<sockaddr*>(&addr), len) != 0 || ::listen(listener_, 8) != 0 ||
            ::getsockname(listener_, reinterpret_cast<sockaddr*>(&addr), &len) != 0)
            throw std::runtime_error("fake gateway: cannot listen");
        port_ = ntohs(addr.sin_port);
        thread_ = std::thread([this, responses = std::move(responses), step] { serve(responses, step); });
    }
    ~FakeGateway()
    {
        stop_ = true;
        thread_.join();
        ::close(listener_);
    }
    std::string endpoint() const { return "http://127.0.0.1:" + std::to_string(port_); }
    std::vector<std::string> requests() const
    {
        std::lock_guard lock(mutex_);
        return requests_;
    }

private:
    bool readable(int fd, int ms)
    {
        pollfd p{fd, POLLIN, 0};
        return ::poll(&p, 1, ms) > 0;
    }

    void serve(const std::vector<std::string>& responses, std::size_t step)
    {
        for (const auto& response : responses) {
            while (!stop_ && !readable(listener_, 50)) {
            }
            if (stop_) return;
            int fd = ::accept(listener_, nullptr, nullptr);
            std::string request;
            char buf[4096];
            // The request: headers, then a body of Content-Length bytes.
            for (;;) {
                auto end = request.find("\r\n\r\n");
                if (end != std::string::npos) {
                    auto cl = request.find("Content-Length: ");
                    std::size_t length = cl == std::string::npos ? 0 : std::stoul(request.substr(cl + 16));
                    if (request.size() >= end + 4 + length) break;
                }
                if (!readable(fd, 5000)) break;
                auto n = ::recv(fd, buf, sizeof buf, 0);
                if (n <= 0) break;
                request.append(buf, static_cast<std::size_t>(n));
            }
            {
                std::lock_guard lock(mutex_);
                requests_.push_back(request);
            }
            int one = 1;
            ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            for (std::size_t i = 0; i < response.size() && !stop_; i += step) {
                if (::send(fd, response.data() + i, std::min(step, response.size() - i), MSG_NOSIGNAL) < 0) break;
                if (step < response.size()) std::this_thread::sleep_for(std::chrono::microseconds(200));
            }
            // Then wait for the client to close, as a gateway holding a stream open would.
            while (!stop_ && !readable(fd, 50)) {
            }
            ::close(fd);
        }
    }

    int listener_ = -1;
    int port_ = 0;
    std::atomic<bool> stop_ = false;
    std::thread thread_;
    mutable std::mutex mutex_;
    std::vector<std::string> requests_;
};

std::string http_response(const std::string& body)
{
    return "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: " +
           std::to_string(body.size()) + "\r\n\r\n" + body;
}

const std::string status_body =
    R"({"header":{"cluster_id":"18446744073709551615","member_id":"7","revision":"42","raft_term":"2"},"leader":"7"})";

}  // namespace

TEST_CASE("etcd client: responses cut into single bytes are read whole")
{
    // Two watch messages in chunks whose boundaries fall inside the JSON; a chunk extension
    // to skip; "AAEC/w==" is the bytes 00 01 02 ff.
    std::string first = R"({"result":{"header":{"revision":"5"},"created":true}})"
                        "\n";
    std::string second =
        R"({"result":{"header":{"revision":"6"},"events":[{"kv":{"key":"L3cvYQ==","value":"AAEC/w==","mod_revision":"6"}},)"
        R"({"type":"DELETE","kv":{"key":"L3cvYg==","mod_revision":"6"}}]}})"
        "\n";
    auto chunk = [](const std::string& data) {
        char size[16];
        std::snprintf(size, sizeof size, "%zx", data.size());
        return std::string(size) + ";ext=1\r\n" + data + "\r\n";
    };
    std::string stream = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk(first.substr(0, 10)) +
                         chunk(first.substr(10) + second.substr(0, 30)) + chunk(second.substr(30)) + "0\r\n\r\n";
    FakeGateway gateway({http_response(status_body), stream});

    auto client = Client::connect({.endpoints = {gateway.endpoint()}});
    REQUIRE(client);
    std::vector<WatchResponse> seen;
    auto result = (*client)->watch(
        "/w/", store::etcd::prefix_end("/w/"), 5, [&](const WatchResponse& r) { seen.push_back(r); return true; }, 5s,
        [] { return false; });
    // The fake ends the stream after two messages, which a real member never does.
    REQUIRE_FALSE(result);
    CHECK(result.error().unavailable);
    CHECK(result.error().message.find("watch stream ended") != std::string::npos);
    REQUIRE(seen.size() == 2);
    CHECK(seen[0].created);
    CHECK(seen[0].revision == 5);
    REQUIRE(seen[1].events.size() == 2);
    CHECK(seen[1].events[0].type == WatchEvent::Type::put);
    CHECK(seen[1].events[0].kv.key == "/w/a");
    CHECK(seen[1].events[0].kv.value == std::string("\x00\x01\x02\xff", 4));
    CHECK(seen[1].events[1].type == WatchEvent::Type::remove);
    CHECK(seen[1].events[1].kv.mod_revision == 6);

    auto requests = gateway.requests();
    REQUIRE(requests.size() == 2);
    CHECK(requests[0].starts_with("POST /v3/maintenance/status HTTP/1.1\r\n"));
    CHECK(requests[1].starts_with("POST /v3/watch HTTP/1.1\r\n"));
    CHECK(requests[1].ends_with(R"({"create_request":{"key":"L3cv","range_end":"L3cw","start_revision":"5"}})"));
}

TEST_CASE("etcd client: oversized answers are refused")
{
    store::etcd::Options options;
    options.request_timeout = 500ms;
    SECTION("headers")
    {
        std::string huge = "HTTP/1.1 200 OK\r\nX-Filler: " + std::string(70 * 1024, 'x') + "\r\n\r\n";
        FakeGateway gateway(std::vector<std::string>(8, huge), 8192);
        options.endpoints = {gateway.endpoint()};
        auto client = Client::connect(options);
        REQUIRE_FALSE(client);
        CHECK(client.error().message.find("response headers too large") != std::string::npos);
    }
    SECTION("body")
    {
        std::string huge = "HTTP/1.1 200 OK\r\nContent-Length: 100000000\r\n\r\n{}";
        FakeGateway gateway(std::vector<std::string>(8, huge), 8192);
        options.endpoints = {gateway.endpoint()};
        auto client = Client::connect(options);
        REQUIRE_FALSE(client);
        CHECK(client.error().message.find("response body too large") != std::string::npos);
    }
    SECTION("chunk")
    {
        std::string huge = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffff\r\n{}";
        FakeGateway gateway(std::vector<std::string>(8, huge), 8192);
        options.endpoints = {gateway.endpoint()};
        auto client = Client::connect(options);
        REQUIRE_FALSE(client);
        CHECK(client.error().message.find("response body too large") != std::string::npos);
    }
}
