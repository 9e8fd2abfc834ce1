// cluster: mesd's resources and VIPs kept in etcd, shared by every node.
//
// Keys under the configured prefix:
//   res/<mesh>/<kind>/<name>   a resource with its VIPs (mesd's compact binary form)
//   vip/<address>              the claim of one VIP: "<mesh>/<name>" of its MES
//   quarantine/<address>       a released VIP, under a lease as long as the quarantine
//   nodes/<nodeName>           a node's applied revision and last contact, under its lease
//
// Writes (`mesctl`) go through etcd transactions: a MES is created together with its VIP
// claim, only if neither the MES nor the VIP nor a quarantine entry for it exists; a change
// only if the MES is still as it was read. A lost race is read again and retried, so no two
// MES ever share a VIP and a VIP never changes while its MES exists. A resource's age is its
// key's create revision: one order for the whole cluster, so every node computes the same
// hostname winners. Reads (`mesd`) watch the prefix and mirror it into the local store
// (Mirror), which DNS and the proxy read exactly as in single-node mode. A node's one write
// of resources: at each start it creates Kuma's default HostnameGenerators where etcd has
// none of their names (create_absent), as Kuma's control plane does at its start.
#pragma once

#include "conf/conf.hpp"
#include "store/etcd.hpp"
#include "store/store.hpp"

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace store::cluster {

class Layout {
public:
    explicit Layout(std::string prefix) : prefix_(std::move(prefix)) {}
    const std::string& prefix() const { return prefix_; }
    std::string resource(conf::Kind kind, std::string_view mesh, std::string_view name) const;
    std::string resources() const { return prefix_ + "res/"; }
    std::string resources_of(std::string_view mesh, conf::Kind kind) const;
    std::string vip(const vip::Address& a) const { return prefix_ + "vip/" + a.to_string(); }
    std::string vips() const { return prefix_ + "vip/"; }
    std::string quarantine(const vip::Address& a) const { return prefix_ + "quarantine/" + a.to_string(); }
    std::string quarantines() const { return prefix_ + "quarantine/"; }
    std::string node(std::string_view name) const { return prefix_ + "nodes/" + std::string(name); }
    std::string nodes() const { return prefix_ + "nodes/"; }
    // The resource a key names; nullopt for other keys.
    std::optional<ResourceKey> parse_resource(std::string_view key) const;

private:
    std::string prefix_;
};

// The value of a res/ key. `created` is not in it: it is the key's create revision.
std::string encode_value(const MirrorEntry& entry);
std::optional<MirrorEntry> decode_value(std::string_view value, const ResourceKey& key, std::int64_t create_revision);

// The client options of a configuration's cluster section.
etcd::Options client_options(const conf::Config& config);
// "etcd at E1,E2: MESSAGE": what a user sees when etcd cannot be used.
std::string describe(const etcd::Options& options, const etcd::Error& error);

// Creates each of `resources` (valid, and claiming no VIP: not a MeshExternalService) where
// etcd holds no resource of its name; one of a name already there (a user's own, or another
// node's creation) is left as it is. Each key is created under a compare of its create
// revision with 0, so of several nodes doing this at once exactly one creates it. One
// transaction when all are absent or all present; its failure branch reads the keys, and
// those found absent are tried again. Returns the keys this call created.
Result<std::vector<ResourceKey>> create_absent(etcd::Client& client, const Layout& layout,
                                               std::span<const conf::Resource> resources);

struct Limits {
    std::size_t max_txn_ops = 128;                     // etcd's --max-txn-ops default
    std::size_t max_request_bytes = std::size_t{1} << 20;  // under etcd's 1.5 MiB --max-request-bytes
};

struct NodeInfo {
    std::string name;
    std::int64_t revision = 0;    // the etcd revision the node has applied
    std::int64_t lag = 0;         // revisions it had not applied when it last wrote its record
    std::int64_t updated_ms = 0;  // last contact, unix milliseconds
    std::int64_t started_ms = 0;
    bool connected = false;       // the node's watch was live at its last contact
};

// mesctl's side: writes to etcd. Every call may take several transactions; each one is
// whole, and re-running a call after a failure finishes what it left (creations are
// skipped as unchanged, nothing is created twice).
class Writer {
public:
    Writer(etcd::Client& client, const conf::Config& config, Limits limits = {});

    // Creates or changes `resources` (validated), claiming VIPs for new MES; with `prune`,
    // deletes every resource in etcd that the input does not name, except those of `spare`
    // (Kuma's default generators, which the nodes created and an input rarely names).
    Result<WriteReport> apply(std::span<const conf::Resource> resources, bool prune,
                              std::span<const ResourceKey> spare = {});
    // Deletes one resource and quarantines its VIPs; a Secret still used by a MES is refused
    // unless `force`.
    Result<WriteReport> remove(conf::Kind kind, std::string_view mesh, std::string_view name, bool force);
    // Copies a single-node store into etcd, every MES keeping its VIPs and the creation order
    // kept; what etcd already holds unchanged is skipped, a conflict is reported and skipped.
    Result<WriteReport> import(const Snapshot& snapshot, std::vector<std::string>& conflicts);
    Result<bool> has_secret(std::string_view mesh, std::string_view name);
    Result<std::vector<NodeInfo>> nodes();

    struct Impl;

private:
    etcd::Client& client_;
    Layout layout_;
    Pools pools_;
    Limits limits_;
    etcd::Options options_;
};

// mesd's side: one thread watches etcd and writes what it sees into the store, another
// keeps the node's registration alive. Neither touches the DNS or proxy loops: they read
// the store as they always do, told of a change by `on_change`.
class Mirror {
public:
    struct State {
        bool connected = false;     // the watch is live
        bool synced = false;        // the store holds a complete copy (now or from before)
        std::int64_t revision = 0;  // the etcd revision applied
        std::chrono::system_clock::time_point current_at{};  // when the node last knew it was current
        std::string endpoint;       // the member watched
        std::uint64_t resyncs = 0;
        std::uint64_t batches = 0;  // watch responses written to the store
        std::uint64_t errors = 0;   // failed connections, watches and writes
        std::string last_error;
    };

    struct Hooks {
        std::function<void()> changed;  // the store changed; called on a mirror thread
        enum class Level { info, warn, error };
        using Fields = std::vector<std::pair<std::string, std::string>>;
        std::function<void(Level, std::string_view message, const Fields& fields)> log;  // any thread
    };

    Mirror(Store& store, const conf::Config& config, Hooks hooks);
    ~Mirror();  // stops
    Mirror(const Mirror&) = delete;
    Mirror& operator=(const Mirror&) = delete;

    // Resources this node creates in etcd, where etcd has none of their name, once per start:
    // Kuma's default HostnameGenerators, as Kuma's control plane creates them at each start.
    // Done by the heart after its first registration that etcd took, and tried again at
    // each beat until it succeeds (etcd away: the node serves meanwhile, nothing waits for
    // it). Call before start().
    void create_at_start(std::vector<conf::Resource> resources);
    void start();
    void stop();
    State state() const;

    struct Impl;

private:
    std::unique_ptr<Impl> impl_;
};

}  // namespace store::cluster
