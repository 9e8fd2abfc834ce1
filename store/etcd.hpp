// etcd: a client of etcd's v3 API through its JSON gateway (HTTP/1.1, JSON bodies with
// base64 keys and values), the path etcd documents for clients without gRPC. Blocking calls
// with deadlines: `mesctl` uses it directly, and `mesd` only from its cluster threads, never
// from the DNS or proxy loops.
//
// Glossary
//   member     one etcd server; a Client talks to one at a time and moves to the next listed
//              endpoint when it cannot be reached (connect failure, timeout, closed stream)
//   revision   etcd's global counter, bumped by every write; every response says the
//              revision it saw
//   compacted  history before a revision that etcd has dropped: a watch cannot start there
//   lease      a time-to-live that keys can be attached to; they vanish when it expires
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <expected>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace store::etcd {

struct Tls {
    std::string ca_file;    // verifies the members' certificates; empty: the system's CAs
    std::string cert_file;  // client certificate, for members run with --client-cert-auth
    std::string key_file;
};

struct Options {
    // "http://host:port" or "https://host:port" (a bare "host:port" is http, or https when
    // `tls` is set). Hosts are IP literals or names resolved with getaddrinfo.
    std::vector<std::string> endpoints;
    std::optional<Tls> tls;
    std::string username;  // with a password: authenticate and send the token on each call
    std::string password;
    std::chrono::milliseconds dial_timeout{2000};     // connect (and TLS handshake) to one member
    std::chrono::milliseconds request_timeout{5000};  // one unary call, all retries included
};

struct Error {
    std::string message;  // says which member and what happened
    // No member answered (refused, timed out, closed): worth retrying later, unlike a
    // refusal by etcd itself (bad request, permission denied, too many operations).
    bool unavailable = false;
    bool compacted = false;  // the revision asked for has been compacted away
    int code = 0;            // the gRPC status code etcd gave, 0 when it gave none
};
template <class T>
using Result = std::expected<T, Error>;

struct KeyValue {
    std::string key;
    std::string value;
    std::int64_t create_revision = 0;
    std::int64_t mod_revision = 0;
    std::int64_t version = 0;
    std::int64_t lease = 0;
};

// The end of the range holding every key that starts with `prefix` (etcd's "prefix end").
std::string prefix_end(std::string_view prefix);

struct RangeRequest {
    std::string key;
    std::string range_end;      // empty: `key` alone
    std::int64_t revision = 0;  // 0: the newest
    std::int64_t limit = 0;     // 0: no limit
    bool keys_only = false;
    bool count_only = false;
};

struct RangeResponse {
    std::int64_t revision = 0;  // the store revision the read saw
    std::vector<KeyValue> kvs;
    bool more = false;  // `limit` cut the answer short
    std::int64_t count = 0;
};

struct Compare {
    enum class Target { create, mod, version, value };
    enum class Op { equal, greater, less, not_equal };
    std::string key;
    Target target = Target::create;
    Op op = Op::equal;
    std::int64_t number = 0;  // for create, mod and version
    std::string value;        // for value
};

struct Operation {
    enum class Type { put, remove, range };
    Type type = Type::put;
    std::string key;
    std::string value;      // put
    std::string range_end;  // remove and range: empty for `key` alone
    std::int64_t lease = 0; // put
};

struct TxnResponse {
    bool succeeded = false;
    std::int64_t revision = 0;
    // One per operation of the branch taken, in order; filled for range operations only.
    std::vector<RangeResponse> ranges;
};

struct WatchEvent {
    enum class Type { put, remove };
    Type type = Type::put;
    KeyValue kv;  // for a removal: key and mod_revision only
};

struct WatchResponse {
    std::int64_t revision = 0;  // header revision
    bool created = false;       // the answer to the watch's creation
    bool canceled = false;
    std::string cancel_reason;
    std::int64_t compact_revision = 0;  // >0: the start revision was compacted; history starts here
    std::vector<WatchEvent> events;     // every event of one revision arrives in one response
};

struct MemberStatus {
    std::string endpoint;
    std::uint64_t cluster_id = 0;
    std::uint64_t member_id = 0;
    std::int64_t revision = 0;
    std::uint64_t leader = 0;
};

class Client {
public:
    // Connects to the first member that answers and authenticates when a user is set.
    static Result<std::unique_ptr<Client>> connect(const Options& options);
    ~Client();
    Client(const Client&) = delete;
    Client& operator=(const Client&) = delete;

    Result<RangeResponse> range(const RangeRequest& request);
    Result<std::int64_t> put(std::string_view key, std::string_view value, std::int64_t lease = 0);
    Result<TxnResponse> txn(const std::vector<Compare>& compare, const std::vector<Operation>& success,
                            const std::vector<Operation>& failure);
    Result<std::int64_t> lease_grant(std::chrono::seconds ttl);    // the lease's ID
    Result<std::int64_t> lease_keepalive(std::int64_t id);          // TTL left; 0: expired or unknown
    Result<void> lease_revoke(std::int64_t id);
    Result<void> compact(std::int64_t revision);
    Result<MemberStatus> status();

    // Watches [key, range_end) from `start_revision` on a stream of its own, calling
    // `on_response` for each response (the creation answer included) until it returns false,
    // the stream fails (an error, `unavailable` for a lost member), or interrupt() is called.
    // Every `idle` without a response it calls `on_idle`, which may use the other calls of
    // this Client; it stops the watch by returning false. Returns success when stopped by a
    // callback or interrupt().
    Result<void> watch(std::string_view key, std::string_view range_end, std::int64_t start_revision,
                       const std::function<bool(const WatchResponse&)>& on_response,
                       std::chrono::milliseconds idle, const std::function<bool()>& on_idle);

    // Thread-safe: makes a blocking watch() (and any call in progress) return soon. It is
    // final, for shutting down: later calls fail at once and later watches return success.
    void interrupt();

    const std::string& endpoint() const;  // the member now in use

    struct Impl;

private:
    explicit Client(std::unique_ptr<Impl> impl);
    std::unique_ptr<Impl> impl_;
};

}  // namespace store::etcd
