// store: mesd's state in one LMDB environment — resources, their VIPs and hostnames, and
// the status Kuma would show for them — changed only by whole write transactions.
//
// Glossary
//   record      a resource as stored, with its creation order and status
//   owner       the MES a VIP belongs to
//   quarantine  released VIPs with their release time; reused only after it has passed
//   generation  a counter bumped by every write that changes anything, so that readers
//               notice changes with one lookup
//   snapshot    a consistent read view (an LMDB read transaction); cheap, but hold it only
//               as long as needed: a writer in this process cannot grow the map meanwhile
//
// Every apply or delete is one LMDB write transaction: resources, VIPs, hostnames and status
// change together or not at all, and a crash at any moment leaves the store before or after
// the change. LMDB's lock file lets `mesctl` and a running `mesd` share one store; writers
// queue. When the map is full it is grown and the transaction re-run.
//
// Nothing of LMDB shows here: other modules see typed operations.
#pragma once

#include "conf/conf.hpp"
#include "vip/vip.hpp"

#include <chrono>
#include <cstdint>
#include <expected>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace store {

struct Error {
    std::string message;
    bool map_full = false;  // the write needed a larger map and WriteOptions::grow_map was off
    // Another process grew the map while this one had a transaction open: LMDB takes the new
    // size only when none is, so end them (a held Snapshot) and try again.
    bool map_resized = false;
};
template <class T>
using Result = std::expected<T, Error>;

using Clock = std::chrono::system_clock;

struct Options {
    std::string data_dir;  // created 0700 when missing
    // The map starts this large and doubles whenever a write finds it full.
    std::size_t initial_map_bytes = std::size_t{256} << 20;
    std::size_t max_map_bytes = std::size_t{1} << 40;
    // A file of this size (`space.reserve`) kept beside the store and given up when a delete
    // or a prune finds the file system full: LMDB writes every change, deletes included, to
    // free pages, and a full disk would otherwise leave no way to shrink the store. 0: none.
    std::size_t reserve_bytes = std::size_t{1} << 20;
};

// The VIP pools and quarantine a write works with (from the configuration file).
struct Pools {
    std::string ipv4 = "242.0.0.0/8";
    std::string ipv6;  // empty: no IPv6 VIPs
    Clock::duration quarantine = std::chrono::hours(1);

    // The `vip` section of the configuration file.
    static Pools from(const conf::Config& config);
};

// What Kuma keeps in a MES's status: its VIP and the hostnames generated for it.
struct MesStatus {
    std::optional<vip::Address> ipv4;
    std::optional<vip::Address> ipv6;
    std::string vip_error;  // why a configured pool gave no VIP ("no addresses left in pool ...")
    conf::HostnameStatus hostnames;
    bool operator==(const MesStatus&) const = default;
};

struct Entry {
    conf::Resource resource;
    std::uint64_t created = 0;  // creation order; the older MES keeps a contested hostname
    Clock::time_point created_at;
    Clock::time_point modified_at;
    MesStatus status;  // MeshExternalService only
};

enum class Outcome { created, configured, unchanged, deleted };
std::string_view outcome_name(Outcome o);  // "created", "configured", ...

struct Change {
    conf::Kind kind = conf::Kind::mesh_external_service;
    std::string mesh;
    std::string name;
    Outcome outcome = Outcome::unchanged;
    MesStatus status;  // after the write (before it, for deletions)
};

struct WriteOptions {
    Pools pools;
    Clock::time_point now = Clock::now();
    bool prune = false;  // apply: delete what the input does not name
    bool force = false;  // delete: even a Secret that a MES still references
    // Off: a write that needs a larger map fails (Error::map_full) instead of growing it.
    // Growing needs no read transaction open in this process, which a writer on a thread
    // beside readers cannot promise; it retries where it can (mesd: on its loop).
    bool grow_map = true;
    // For tests and benchmarks: every write that touches a mesh recomputes the hostnames of
    // all its MES, instead of generating only for new ones where that gives the same result.
    bool full_recompute = false;
    // {{ .Zone }} of a MES without the label kuma.io/zone (config `zone`).
    std::string zone = "default";
};

struct WriteReport {
    std::vector<Change> changes;     // in input order; pruned resources last
    std::vector<std::string> notes;  // VIPs moved by a pool change, VIPs that could not be had
    std::uint64_t generation = 0;    // after the write
};

struct Owner {
    std::string mesh;
    std::string name;
    std::optional<vip::Address> ipv4;
    std::optional<vip::Address> ipv6;
};

struct VipEntry {
    vip::Address address;
    std::string mesh;
    std::string name;
};

struct Quarantined {
    vip::Address address;
    Clock::time_point released;
};

// LMDB's reader table: a slot per open read transaction, shared by every process using the
// store. A process killed while reading leaves its slot behind until someone clears it.
struct Readers {
    std::size_t in_use = 0;  // slots held, stale ones included
    std::size_t max = 0;     // the table's size; a read beyond it fails until a slot is freed
};

struct Usage {
    std::size_t bytes = 0;        // pages in use times page size, all databases
    std::size_t map_bytes = 0;    // the current map size
    std::size_t resources = 0;
    std::size_t vips = 0;
};

// Cluster mode: the store as a node's copy of what etcd holds. etcd decides every VIP and
// every resource's age; the store takes them as they are, works out hostnames and statuses
// as it does for its own writes, and records the etcd revision it has caught up to.

// A resource as etcd holds it.
struct MirrorEntry {
    conf::Resource resource;
    std::uint64_t created = 0;  // etcd's create revision: the cluster-wide creation order
    Clock::time_point created_at;
    Clock::time_point modified_at;
    std::optional<vip::Address> ipv4;  // the VIPs claimed for a MES in etcd
    std::optional<vip::Address> ipv6;
};

struct ResourceKey {
    conf::Kind kind = conf::Kind::mesh_external_service;
    std::string mesh;
    std::string name;
};

// What one etcd watch response (or a whole snapshot) changes, applied as one write.
struct MirrorBatch {
    bool replace = false;  // a whole snapshot: every stored resource not in `puts` goes
    std::vector<MirrorEntry> puts;
    std::vector<ResourceKey> removals;  // ones not stored are ignored
    std::int64_t revision = 0;          // the etcd revision the store holds after the write
    std::string source;                 // which etcd cluster and prefix, recorded with it
};

struct MirrorState {
    std::int64_t revision = 0;  // 0: never written from etcd
    std::string source;
};

class Store;

// A consistent read view of the store.
class Snapshot {
public:
    Snapshot(Snapshot&&) noexcept;
    Snapshot& operator=(Snapshot&&) noexcept;
    ~Snapshot();

    // Resources of `kind` (all kinds when unset) in `mesh` (all when unset), by key order.
    Result<std::vector<Entry>> list(std::optional<conf::Kind> kind, std::optional<std::string_view> mesh) const;
    Result<std::optional<Entry>> get(conf::Kind kind, std::string_view mesh, std::string_view name) const;
    Result<bool> has_secret(std::string_view mesh, std::string_view name) const;
    // The MES that hold `hostname` (matched case-insensitively), one per mesh at most.
    Result<std::vector<Owner>> lookup_hostname(std::string_view hostname) const;
    // The MES of `mesh` that holds `hostname`, already lowercase and without the final dot:
    // three B-tree lookups and no cursor, for the DNS hot path.
    Result<std::optional<Owner>> lookup_hostname_in(std::string_view hostname, std::string_view mesh) const;
    Result<std::optional<Owner>> owner_of(const vip::Address& address) const;
    Result<std::vector<VipEntry>> vips() const;
    struct Counts {
        std::size_t vips = 0;
        std::size_t hostnames = 0;
    };
    // How many VIPs and hostname entries there are, without reading them.
    Result<Counts> counts() const;
    // Every owner's VIPs in (mesh, name) order, so both families of one owner come together;
    // for building an in-memory index without copying the store first.
    Result<void> scan_owner_vips(
        const std::function<void(std::string_view mesh, std::string_view name, const vip::Address&)>& fn) const;
    // Every generated hostname (lowercase) with the mesh and MES holding it, by hostname.
    Result<void> scan_hostnames(
        const std::function<void(std::string_view hostname, std::string_view mesh, std::string_view name)>& fn) const;
    Result<std::vector<Quarantined>> quarantine() const;
    Result<std::uint64_t> generation() const;
    // The pools recorded by the last write (empty strings before any).
    Result<Pools> pools() const;
    // The etcd revision and source recorded by the last Store::mirror.
    Result<MirrorState> mirror_state() const;
    // Every broken invariant, described; empty when the store is sound.
    Result<std::vector<std::string>> check() const;

private:
    friend class Store;
    struct Impl;
    explicit Snapshot(std::unique_ptr<Impl> impl);
    std::unique_ptr<Impl> impl_;
};

class Store {
public:
    static Result<std::unique_ptr<Store>> open(const Options& options);
    ~Store();
    Store(const Store&) = delete;
    Store& operator=(const Store&) = delete;

    // Creates or updates `resources` (already validated), allocates VIPs for new MES,
    // recomputes hostnames and statuses of the meshes touched, and with `prune` deletes
    // every stored resource the input does not name.
    Result<WriteReport> apply(std::span<const conf::Resource> resources, const WriteOptions& options);
    // Deletes one resource; its VIPs go to quarantine. A Secret still referenced by a MES is
    // refused (naming them) unless `options.force`. Deleting what does not exist is an error.
    Result<WriteReport> remove(conf::Kind kind, std::string_view mesh, std::string_view name,
                               const WriteOptions& options);
    // Records `options.pools`, moving VIPs that fall outside them; a no-op when unchanged.
    Result<WriteReport> sync_pools(const WriteOptions& options);

    // Writes what etcd holds (cluster mode): the entries' VIPs and creation orders as given,
    // no quarantine (etcd keeps it), hostnames and statuses recomputed for the meshes touched,
    // and the batch's revision recorded, all in one transaction.
    Result<WriteReport> mirror(const MirrorBatch& batch, const WriteOptions& options);

    Result<Snapshot> snapshot() const;
    Result<Usage> usage() const;
    // Drops this process's mappings of the store's pages. The kernel's page cache keeps them
    // and the next read maps them back in, so this is always safe; a reader that copied what
    // it needs calls it so that pages it will not touch again stop counting in its RSS.
    void unmap_pages() const;
    const std::string& data_dir() const;

    // Why the store was opened read-only (a read-only file system, files or directory not
    // writable); empty when it can be written. Every write of a read-only store fails.
    const std::string& read_only() const;
    // Frees the reader slots of processes that died reading (mdb_reader_check); returns how
    // many. Open and a read that finds the table full do it too.
    std::size_t clear_stale_readers() const;
    Readers readers() const;

    struct Impl;

private:
    explicit Store(std::unique_ptr<Impl> impl);
    std::unique_ptr<Impl> impl_;
};

}  // namespace store
