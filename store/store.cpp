#include "store/store.hpp"

#include "store/detail/codec.hpp"
#include "store/detail/guard.hpp"
#include "store/detail/lmdb.hpp"
#include "store/detail/verify.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <mutex>
#include <shared_mutex>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <set>

namespace store {

using namespace detail;

namespace {

constexpr std::string_view schema_version = "1";
constexpr char sep = '\0';

bool is_damage(int code)
{
    return code == MDB_CORRUPTED || code == MDB_INVALID || code == MDB_PAGE_NOTFOUND || code == map_fault ||
           code == lmdb_assertion;
}

// Damage found after the store opened (a bad record, a page LMDB cannot use, a file cut short
// under the map) names the file and says what to do about it, like damage found when opening.
Error to_error(const Failure& f, const Dbs& dbs)
{
    if (f.code == MDB_MAP_RESIZED) return Error{f.message, false, true};
    if (!is_damage(f.code) || !dbs.data_dir) return Error{f.message};
    return Error{f.message + "; " + *dbs.data_dir + "/data.mdb is damaged: restore " + *dbs.data_dir +
                 " from a backup, or move it aside and re-apply the resources (mesctl apply -f ...) into a fresh "
                 "data dir"};
}

std::string kind_prefix(conf::Kind kind) { return std::string(1, static_cast<char>(static_cast<int>(kind) + 1)); }

std::string resource_key(conf::Kind kind, std::string_view mesh, std::string_view name)
{
    std::string key = kind_prefix(kind);
    key.append(mesh);
    key.push_back(sep);
    key.append(name);
    return key;
}

std::string owner_value(std::string_view mesh, std::string_view name)
{
    std::string v(mesh);
    v.push_back(sep);
    v.append(name);
    return v;
}

std::pair<std::string, std::string> split_owner(std::string_view v)
{
    auto nul = v.find(sep);
    if (nul == std::string_view::npos) return {std::string(v), {}};
    return {std::string(v.substr(0, nul)), std::string(v.substr(nul + 1))};
}

char family_char(vip::Family f) { return f == vip::Family::v4 ? '4' : '6'; }

std::string owner_key(std::string_view mesh, std::string_view name, vip::Family f)
{
    std::string key = owner_value(mesh, name);
    key.push_back(sep);
    key.push_back(family_char(f));
    return key;
}

std::string vip_key(const vip::Address& a) { return static_cast<char>(a.family) + a.bytes(); }
std::string family_prefix(vip::Family f) { return std::string(1, static_cast<char>(f)); }

std::optional<vip::Address> address_from_vip_key(std::string_view key)
{
    if (key.empty()) return std::nullopt;
    return vip::Address::from_bytes(key.substr(1));
}

std::string lowercase(std::string_view s)
{
    std::string out(s);
    for (auto& c : out)
        if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
    return out;
}

std::string hostname_key(std::string_view hostname, std::string_view mesh)
{
    std::string key = lowercase(hostname);
    key.push_back(sep);
    key.append(mesh);
    return key;
}

std::int64_t unix_seconds(Clock::time_point t)
{
    return std::chrono::duration_cast<std::chrono::seconds>(t.time_since_epoch()).count();
}

Clock::time_point from_unix_seconds(std::int64_t s) { return Clock::time_point(std::chrono::seconds(s)); }

std::optional<vip::Address>& status_address(MesStatus& s, vip::Family f) { return f == vip::Family::v4 ? s.ipv4 : s.ipv6; }

Res<Record> read_record(std::string_view bytes, std::string_view key)
{
    auto rec = decode_record(bytes);
    if (!rec) {
        std::string printable;
        for (char c : key) printable += (c == sep ? '/' : (c < ' ' ? '?' : c));
        return std::unexpected(Failure{MDB_CORRUPTED, "record " + printable + " cannot be decoded"});
    }
    return std::move(*rec);
}

Res<conf::Resource> read_resource(const Record& rec)
{
    Reader r(rec.resource_bytes);
    auto res = decode_resource(r);
    if (!res || r.remaining() != 0) return std::unexpected(Failure{MDB_CORRUPTED, "a stored resource cannot be decoded"});
    return std::move(*res);
}

Entry to_entry(conf::Resource res, const Record& rec)
{
    Entry e;
    e.resource = std::move(res);
    e.created = rec.created;
    e.created_at = from_unix_seconds(rec.created_at);
    e.modified_at = from_unix_seconds(rec.modified_at);
    e.status = rec.status;
    return e;
}


// Decodes every record under `prefix` and hands it to `fn`; stops at the first damaged one.
template <class Fn>
Res<void> scan_records(const Txn& txn, std::string_view prefix, Fn&& fn)
{
    std::optional<Failure> failure;
    auto scan = txn.scan(txn.dbs().resources, prefix, [&](std::string_view key, std::string_view value) {
        auto rec = read_record(value, key);
        if (!rec) {
            failure = rec.error();
            return false;
        }
        auto res = read_resource(*rec);
        if (!res) {
            failure = res.error();
            return false;
        }
        fn(key, std::move(*rec), std::move(*res));
        return true;
    });
    if (!scan) return scan;
    if (failure) return std::unexpected(*failure);
    return {};
}

struct ParsedPools {
    std::optional<vip::Pool> v4;
    std::optional<vip::Pool> v6;
    Clock::duration quarantine{};
};

Res<ParsedPools> parse_pools(const Pools& pools)
{
    ParsedPools out;
    out.quarantine = pools.quarantine;
    if (!pools.ipv4.empty()) {
        out.v4 = vip::Pool::parse(pools.ipv4);
        if (!out.v4 || out.v4->family() != vip::Family::v4)
            return std::unexpected(Failure{EINVAL, "vip.ipv4: not an IPv4 CIDR: " + pools.ipv4});
    }
    if (!pools.ipv6.empty()) {
        out.v6 = vip::Pool::parse(pools.ipv6);
        if (!out.v6 || out.v6->family() != vip::Family::v6)
            return std::unexpected(Failure{EINVAL, "vip.ipv6: not an IPv6 CIDR: " + pools.ipv6});
    }
    return out;
}

// A record with its key and decoded resource, as a generation needs them.
struct Loaded {
    std::string key;
    Record record;
    conf::Resource resource;
};

Res<void> load_kind(const Txn& txn, conf::Kind kind, std::string_view mesh, std::vector<Loaded>& out)
{
    return scan_records(txn, resource_key(kind, mesh, ""), [&](std::string_view key, Record rec, conf::Resource res) {
        out.push_back(Loaded{std::string(key), std::move(rec), std::move(res)});
    });
}

// ---- Writing -----------------------------------------------------------------------------

// One write transaction's work. Also the VIP ledger, answering from the same transaction.
class WriteTxn final : public vip::Ledger {
public:
    WriteTxn(Txn& txn, const WriteOptions& options, const ParsedPools& pools)
        : txn_(txn), dbs_(txn.dbs()), options_(options), pools_(pools)
    {
    }

    Res<void> sync_pools();
    Res<void> upsert(const conf::Resource& res);
    Res<void> erase(conf::Kind kind, std::string_view mesh, std::string_view name);
    Res<void> prune(const std::set<std::string>& keep);
    Res<void> mirror(const MirrorBatch& batch);
    Res<void> finish();  // recompute hostnames of touched meshes, fill statuses, bump generation

    WriteReport& report() { return report_; }

    // vip::Ledger
    bool in_use(const vip::Address& a) override { return exists(dbs_.owner_by_vip, vip_key(a)); }
    bool quarantined(const vip::Address& a) override { return exists(dbs_.quarantine_by_vip, vip_key(a)); }
    std::optional<vip::Address> cursor(vip::Family f) override;
    void set_cursor(const vip::Address& a) override;
    std::optional<std::pair<vip::Address, Clock::time_point>> oldest_released(vip::Family f) override;
    void release_from_quarantine(const vip::Address& a) override;

private:
    bool exists(MDB_dbi dbi, std::string_view key)
    {
        auto v = txn_.get(dbi, key);
        if (!v) {
            remember(v.error());
            return true;  // taken, to be safe; the failure aborts the transaction anyway
        }
        return v->has_value();
    }
    void remember(Failure f)
    {
        if (!ledger_failure_) ledger_failure_ = std::move(f);
    }
    const std::optional<vip::Pool>& pool(vip::Family f) const { return f == vip::Family::v4 ? pools_.v4 : pools_.v6; }

    Res<void> ensure_vips(const conf::Resource& res, MesStatus& status, bool& changed);
    Res<void> free_vip(const vip::Address& a, bool quarantine);
    Res<void> release_quarantine_outside(vip::Family f);
    Res<std::optional<Record>> load(std::string_view key);
    // Deletes a stored record with its VIPs (to quarantine or not) and hostnames.
    Res<void> drop(conf::Kind kind, std::string_view mesh, std::string_view name, std::string_view key,
                   const Record& rec, bool quarantine);
    Res<void> record_pools();
    Res<void> mirror_remove(conf::Kind kind, std::string_view mesh, std::string_view name);
    Res<void> mirror_put(const MirrorEntry& entry);
    Res<void> take_vip(const vip::Address& a, std::string_view mesh, std::string_view name);
    Res<void> put_record(std::string_view key, const Record& rec)
    {
        changed_ = true;
        return txn_.put(dbs_.resources, key, encode_record(rec));
    }
    Res<void> store_statuses(const std::string& mesh, std::vector<Loaded>& services,
                             std::vector<conf::HostnameStatus>& statuses);
    Res<void> recompute(const std::string& mesh);
    Res<std::set<std::string>> meshes_with_mes();
    Res<void> generate_for_new(const std::string& mesh, const std::vector<std::string>& keys);
    Res<std::uint64_t> next_sequence();
    // The sequence as the write found it: every record stored before it is no younger.
    Res<std::uint64_t> sequence_before();
    // Hostnames of `mesh` need the whole generation over again.
    void touch_mesh(std::string_view mesh) { dirty_meshes_.insert(std::string(mesh)); }
    // `key`, a MES of `mesh`, was created by this write with creation order `created`.
    void touch_new_mes(std::string_view mesh, std::string_view key, std::uint64_t created);

    Txn& txn_;
    const Dbs& dbs_;
    const WriteOptions& options_;
    const ParsedPools& pools_;
    WriteReport report_;
    std::set<std::string> dirty_meshes_;  // full recompute
    // Meshes whose only change is new MES younger than every stored resource: the keys of
    // those MES, whose hostnames can be generated alone (see generate_for_new).
    std::map<std::string, std::vector<std::string>> new_mes_;
    std::optional<std::uint64_t> sequence_before_;
    bool recompute_all_ = false;  // every touched mesh gets the full recompute
    bool changed_ = false;
    std::optional<Failure> ledger_failure_;
    std::uint64_t largest_created_ = 0;  // of the records a mirror wrote
};

std::optional<vip::Address> WriteTxn::cursor(vip::Family f)
{
    auto v = txn_.get(dbs_.meta, std::string("cursor") + family_char(f));
    if (!v) {
        remember(v.error());
        return std::nullopt;
    }
    if (!*v) return std::nullopt;
    return vip::Address::from_bytes(**v);
}

void WriteTxn::set_cursor(const vip::Address& a)
{
    if (auto r = txn_.put(dbs_.meta, std::string("cursor") + family_char(a.family), a.bytes()); !r) remember(r.error());
}

std::optional<std::pair<vip::Address, Clock::time_point>> WriteTxn::oldest_released(vip::Family f)
{
    std::optional<std::pair<vip::Address, Clock::time_point>> out;
    auto r = txn_.scan(dbs_.released, family_prefix(f), [&](std::string_view key, std::string_view) {
        if (key.size() < 9) return true;
        if (auto a = vip::Address::from_bytes(key.substr(9)))
            out.emplace(*a, from_unix_seconds(static_cast<std::int64_t>(from_u64_be(key.substr(1, 8)))));
        return false;
    });
    if (!r) remember(r.error());
    return out;
}

void WriteTxn::release_from_quarantine(const vip::Address& a)
{
    auto when = txn_.get(dbs_.quarantine_by_vip, vip_key(a));
    if (!when) {
        remember(when.error());
        return;
    }
    if (*when && (*when)->size() == 8) {
        std::string released_key = family_prefix(a.family) + std::string(**when) + a.bytes();
        if (auto r = txn_.del(dbs_.released, released_key); !r) remember(r.error());
    }
    if (auto r = txn_.del(dbs_.quarantine_by_vip, vip_key(a)); !r) remember(r.error());
}

Res<std::uint64_t> WriteTxn::sequence_before()
{
    if (sequence_before_) return *sequence_before_;
    auto v = txn_.get(dbs_.meta, "sequence");
    if (!v) return std::unexpected(v.error());
    sequence_before_ = *v && (*v)->size() == 8 ? from_u64_be(**v) : 0;
    return *sequence_before_;
}

void WriteTxn::touch_new_mes(std::string_view mesh, std::string_view key, std::uint64_t created)
{
    // Ordered after every stored MES (created above the sequence they were numbered from),
    // it cannot take a name from one of the same generator; generate_for_new checks the
    // other generators. Older or equal: it may come first in a generator's service order.
    if (options_.full_recompute || !sequence_before_ || created <= *sequence_before_)
        touch_mesh(mesh);
    else
        new_mes_[std::string(mesh)].emplace_back(key);
}

Res<std::uint64_t> WriteTxn::next_sequence()
{
    if (auto before = sequence_before(); !before) return before;
    auto v = txn_.get(dbs_.meta, "sequence");
    if (!v) return std::unexpected(v.error());
    std::uint64_t seq = (*v && (*v)->size() == 8 ? from_u64_be(**v) : 0) + 1;
    if (auto r = txn_.put(dbs_.meta, "sequence", u64_be(seq)); !r) return std::unexpected(r.error());
    return seq;
}

Res<void> WriteTxn::free_vip(const vip::Address& a, bool quarantine)
{
    if (auto r = txn_.del(dbs_.owner_by_vip, vip_key(a)); !r) return std::unexpected(r.error());
    if (!quarantine || !pool(a.family) || !pool(a.family)->contains(a)) return {};
    auto when = u64_be(static_cast<std::uint64_t>(unix_seconds(options_.now)));
    if (auto r = txn_.put(dbs_.released, family_prefix(a.family) + when + a.bytes(), ""); !r) return r;
    return txn_.put(dbs_.quarantine_by_vip, vip_key(a), when);
}

Res<void> WriteTxn::ensure_vips(const conf::Resource& res, MesStatus& status, bool& changed)
{
    std::string errors;
    for (auto f : {vip::Family::v4, vip::Family::v6}) {
        auto& current = status_address(status, f);
        const auto& p = pool(f);
        if (current || !p) continue;
        auto a = vip::allocate(*p, *this, options_.now, pools_.quarantine);
        if (ledger_failure_) return std::unexpected(*ledger_failure_);
        if (!a) {
            if (!errors.empty()) errors += "; ";
            errors += a.error();
            continue;
        }
        if (auto r = txn_.put(dbs_.owner_by_vip, vip_key(*a), owner_value(res.mesh, res.name)); !r) return r;
        if (auto r = txn_.put(dbs_.vip_by_owner, owner_key(res.mesh, res.name, f), a->bytes()); !r) return r;
        current = *a;
        changed = true;
    }
    if (status.vip_error != errors) {
        if (!errors.empty())
            report_.notes.push_back("MeshExternalService " + res.mesh + "/" + res.name + " has no VIP: " + errors);
        status.vip_error = errors;
        changed = true;
    }
    return {};
}

// Quarantined VIPs of family `f` outside its pool can never be handed out again.
Res<void> WriteTxn::release_quarantine_outside(vip::Family f)
{
    std::vector<std::string> stale_quarantine;
    auto qscan = txn_.scan(dbs_.quarantine_by_vip, family_prefix(f), [&](std::string_view key, std::string_view) {
        auto a = address_from_vip_key(key);
        if (a && (!pool(f) || !pool(f)->contains(*a))) stale_quarantine.emplace_back(key);
        return true;
    });
    if (!qscan) return qscan;
    for (const auto& key : stale_quarantine) {
        auto a = address_from_vip_key(key);
        if (a) release_from_quarantine(*a);
        if (ledger_failure_) return std::unexpected(*ledger_failure_);
    }
    return {};
}

Res<void> WriteTxn::sync_pools()
{
    for (auto f : {vip::Family::v4, vip::Family::v6}) {
        std::string meta_key = std::string("pool") + family_char(f);
        auto stored = txn_.get(dbs_.meta, meta_key);
        if (!stored) return std::unexpected(stored.error());
        std::string configured = pool(f) ? pool(f)->to_string() : "";
        std::string recorded = *stored ? std::string(**stored) : "";
        if (*stored && recorded == configured) continue;
        if (auto r = txn_.put(dbs_.meta, meta_key, configured); !r) return r;
        changed_ = true;
        recompute_all_ = true;
        if (!*stored) {
            // The first write records the pool; there is nothing to move unless VIPs exist.
            bool any = false;
            auto probe = txn_.scan(dbs_.owner_by_vip, family_prefix(f), [&](std::string_view, std::string_view) {
                any = true;
                return false;
            });
            if (!probe) return probe;
            if (!any) continue;
        }

        // VIPs outside the new pool lose their address (no quarantine: it cannot come back).
        std::vector<std::pair<vip::Address, std::string>> moved;
        auto scan = txn_.scan(dbs_.owner_by_vip, family_prefix(f), [&](std::string_view key, std::string_view owner) {
            auto a = address_from_vip_key(key);
            if (a && (!pool(f) || !pool(f)->contains(*a) || *a == pool(f)->network() || *a == pool(f)->broadcast()))
                moved.emplace_back(*a, std::string(owner));
            return true;
        });
        if (!scan) return scan;
        if (auto r = release_quarantine_outside(f); !r) return r;
        if (auto r = txn_.del(dbs_.meta, std::string("cursor") + family_char(f)); !r) return std::unexpected(r.error());

        std::map<std::string, vip::Address> old_address;  // owner -> address it had
        for (const auto& [a, owner] : moved) {
            if (auto r = free_vip(a, false); !r) return r;
            auto [mesh, name] = split_owner(owner);
            if (auto r = txn_.del(dbs_.vip_by_owner, owner_key(mesh, name, f)); !r) return std::unexpected(r.error());
            old_address.emplace(owner, a);
            auto key = resource_key(conf::Kind::mesh_external_service, mesh, name);
            auto bytes = txn_.get(dbs_.resources, key);
            if (!bytes) return std::unexpected(bytes.error());
            if (!*bytes) continue;
            auto rec = read_record(**bytes, key);
            if (!rec) return std::unexpected(rec.error());
            status_address(rec->status, f).reset();
            if (auto r = put_record(key, *rec); !r) return r;
        }
        report_.notes.push_back(std::string("IPv") + family_char(f) + " pool changed from " +
                                (recorded.empty() ? "none" : recorded) + " to " +
                                (configured.empty() ? "none" : configured) + ": " + std::to_string(moved.size()) +
                                " VIP(s) outside it");
        // Every MES lacking a VIP of this family gets one from the new pool.
        std::vector<std::pair<std::string, Record>> records;
        auto mscan = txn_.scan(dbs_.resources, kind_prefix(conf::Kind::mesh_external_service),
                               [&](std::string_view key, std::string_view value) {
                                   auto rec = decode_record(value);
                                   if (rec && !status_address(rec->status, f)) records.emplace_back(key, std::move(*rec));
                                   return true;
                               });
        if (!mscan) return mscan;
        for (auto& [key, rec] : records) {
            auto res = read_resource(rec);
            if (!res) return std::unexpected(res.error());
            bool changed = false;
            if (auto r = ensure_vips(*res, rec.status, changed); !r) return r;
            if (!changed) continue;
            auto owner = owner_value(res->mesh, res->name);
            if (auto it = old_address.find(owner); it != old_address.end() && status_address(rec.status, f))
                report_.notes.push_back("MeshExternalService " + res->mesh + "/" + res->name + ": VIP " +
                                        it->second.to_string() + " moved to " +
                                        status_address(rec.status, f)->to_string());
            if (auto r = put_record(key, rec); !r) return r;
        }
        for (const auto& [owner, a] : old_address) {
            auto [mesh, name] = split_owner(owner);
            if (!pool(f))
                report_.notes.push_back("MeshExternalService " + mesh + "/" + name + ": VIP " + a.to_string() +
                                        " removed (no IPv" + family_char(f) + " pool)");
        }
    }
    return {};
}

Res<void> WriteTxn::upsert(const conf::Resource& res)
{
    auto key = resource_key(res.kind, res.mesh, res.name);
    detail::Writer enc;
    encode_resource(enc, res);
    std::string bytes = std::move(enc.data());

    if (auto before = sequence_before(); !before) return std::unexpected(before.error());
    auto old = txn_.get(dbs_.resources, key);
    if (!old) return std::unexpected(old.error());
    Record rec;
    Outcome outcome = Outcome::created;
    if (*old) {
        auto decoded = read_record(**old, key);
        if (!decoded) return std::unexpected(decoded.error());
        rec = std::move(*decoded);
        outcome = rec.resource_bytes == bytes ? Outcome::unchanged : Outcome::configured;
    } else {
        auto seq = next_sequence();
        if (!seq) return std::unexpected(seq.error());
        rec.created = *seq;
        rec.created_at = unix_seconds(options_.now);
    }
    bool changed = outcome != Outcome::unchanged;
    if (changed) {
        rec.resource_bytes = std::move(bytes);
        rec.modified_at = unix_seconds(options_.now);
        if (res.kind == conf::Kind::mesh_external_service && outcome == Outcome::created)
            touch_new_mes(res.mesh, key, rec.created);
        else if (res.kind != conf::Kind::secret)
            touch_mesh(res.mesh);
    }
    // A MES that found its pool exhausted before tries again on every apply.
    if (res.kind == conf::Kind::mesh_external_service)
        if (auto r = ensure_vips(res, rec.status, changed); !r) return r;
    if (changed)
        if (auto r = put_record(key, rec); !r) return r;
    report_.changes.push_back(Change{res.kind, res.mesh, res.name, outcome, {}});
    return {};
}

Res<void> WriteTxn::erase(conf::Kind kind, std::string_view mesh, std::string_view name)
{
    auto key = resource_key(kind, mesh, name);
    auto bytes = txn_.get(dbs_.resources, key);
    if (!bytes) return std::unexpected(bytes.error());
    if (!*bytes)
        return std::unexpected(Failure{ENOENT, std::string(conf::kind_name(kind)) + " " + std::string(mesh) + "/" +
                                                   std::string(name) + " not found"});
    auto rec = read_record(**bytes, key);
    if (!rec) return std::unexpected(rec.error());

    if (kind == conf::Kind::secret && !options_.force) {
        std::vector<std::string> users;
        auto scan = txn_.scan(dbs_.resources, resource_key(conf::Kind::mesh_external_service, mesh, ""),
                              [&](std::string_view k, std::string_view value) {
                                  auto r = decode_record(value);
                                  if (!r) return true;
                                  auto res = read_resource(*r);
                                  if (!res || !res->mes()) return true;
                                  auto refs = conf::referenced_secrets(*res->mes());
                                  if (std::ranges::find(refs, name) != refs.end()) users.push_back(res->name);
                                  (void)k;
                                  return true;
                              });
        if (!scan) return scan;
        if (!users.empty()) {
            std::string list;
            for (const auto& u : users) list += (list.empty() ? "" : ", ") + std::string(mesh) + "/" + u;
            return std::unexpected(Failure{EBUSY, "Secret " + std::string(mesh) + "/" + std::string(name) +
                                                      " is used by MeshExternalService " + list +
                                                      " (use --force to delete it anyway)"});
        }
    }
    return drop(kind, mesh, name, key, *rec, true);
}

Res<void> WriteTxn::drop(conf::Kind kind, std::string_view mesh, std::string_view name, std::string_view key,
                         const Record& rec, bool quarantine)
{
    if (kind == conf::Kind::mesh_external_service) {
        for (auto f : {vip::Family::v4, vip::Family::v6}) {
            if (const auto& a = f == vip::Family::v4 ? rec.status.ipv4 : rec.status.ipv6) {
                if (auto r = free_vip(*a, quarantine); !r) return r;
                if (auto r = txn_.del(dbs_.vip_by_owner, owner_key(mesh, name, f)); !r) return std::unexpected(r.error());
            }
        }
        for (const auto& addr : rec.status.hostnames.addresses) {
            auto hkey = hostname_key(addr.hostname, mesh);
            auto holder = txn_.get(dbs_.hostnames, hkey);
            if (!holder) return std::unexpected(holder.error());
            if (*holder && **holder == name)
                if (auto r = txn_.del(dbs_.hostnames, hkey); !r) return std::unexpected(r.error());
        }
    }
    if (kind != conf::Kind::secret) touch_mesh(mesh);
    if (auto r = txn_.del(dbs_.resources, key); !r) return std::unexpected(r.error());
    changed_ = true;
    report_.changes.push_back(Change{kind, std::string(mesh), std::string(name), Outcome::deleted, rec.status});
    return {};
}

Res<void> WriteTxn::prune(const std::set<std::string>& keep)
{
    // MES first, so that a Secret they used is no longer referenced when its turn comes.
    for (auto kind : {conf::Kind::mesh_external_service, conf::Kind::hostname_generator, conf::Kind::secret}) {
        std::vector<std::pair<std::string, std::string>> doomed;
        auto scan = txn_.scan(dbs_.resources, kind_prefix(kind), [&](std::string_view key, std::string_view) {
            if (!keep.contains(std::string(key))) {
                auto [mesh, name] = split_owner(key.substr(1));
                doomed.emplace_back(std::move(mesh), std::move(name));
            }
            return true;
        });
        if (!scan) return scan;
        for (const auto& [mesh, name] : doomed)
            if (auto r = erase(kind, mesh, name); !r) return r;
    }
    return {};
}

// ---- Mirroring etcd ----------------------------------------------------------------------
//
// In cluster mode etcd has decided everything but hostnames and statuses: which resources
// exist, their creation order (the create revision) and every VIP. The store takes those as
// they are; quarantine is etcd's too, so nothing freed here goes to the local one.

Res<std::optional<Record>> WriteTxn::load(std::string_view key)
{
    auto bytes = txn_.get(dbs_.resources, key);
    if (!bytes) return std::unexpected(bytes.error());
    if (!*bytes) return std::optional<Record>{};
    auto rec = read_record(**bytes, key);
    if (!rec) return std::unexpected(rec.error());
    return std::optional<Record>{std::move(*rec)};
}

// Records the pools of this node's configuration, which readers take for the reverse zones,
// without moving a VIP: etcd assigned them, from the pools of whichever node wrote them.
Res<void> WriteTxn::record_pools()
{
    for (auto f : {vip::Family::v4, vip::Family::v6}) {
        std::string meta_key = std::string("pool") + family_char(f);
        auto stored = txn_.get(dbs_.meta, meta_key);
        if (!stored) return std::unexpected(stored.error());
        std::string configured = pool(f) ? pool(f)->to_string() : "";
        if (*stored && **stored == configured) continue;
        if (auto r = txn_.put(dbs_.meta, meta_key, configured); !r) return r;
        changed_ = true;  // the reverse zones readers serve follow the recorded pools
        recompute_all_ = true;
        if (auto r = txn_.del(dbs_.meta, std::string("cursor") + family_char(f)); !r) return std::unexpected(r.error());
        if (auto r = release_quarantine_outside(f); !r) return r;
    }
    return {};
}

Res<void> WriteTxn::mirror_remove(conf::Kind kind, std::string_view mesh, std::string_view name)
{
    auto key = resource_key(kind, mesh, name);
    auto rec = load(key);
    if (!rec) return std::unexpected(rec.error());
    if (!*rec) return {};  // already gone: a replayed or overlapping watch event
    // No Secret-in-use refusal: etcd has already accepted the delete.
    return drop(kind, mesh, name, key, **rec, false);
}

// Gives `a` to mesh/name: a still-held address was reassigned in etcd after its holder
// released it (within one batch, before the holder's own update arrives), so the holder
// loses it; a locally quarantined one leaves quarantine (etcd's quarantine is the one that
// counts). The caller writes the new owner's indexes.
Res<void> WriteTxn::take_vip(const vip::Address& a, std::string_view mesh, std::string_view name)
{
    auto holder = txn_.get(dbs_.owner_by_vip, vip_key(a));
    if (!holder) return std::unexpected(holder.error());
    if (!*holder) {
        if (quarantined(a)) release_from_quarantine(a);
        if (ledger_failure_) return std::unexpected(*ledger_failure_);
        return {};
    }
    auto [held_mesh, held_name] = split_owner(**holder);
    if (held_mesh == mesh && held_name == name) return {};
    if (auto r = txn_.del(dbs_.vip_by_owner, owner_key(held_mesh, held_name, a.family)); !r)
        return std::unexpected(r.error());
    auto key = resource_key(conf::Kind::mesh_external_service, held_mesh, held_name);
    auto rec = load(key);
    if (!rec) return std::unexpected(rec.error());
    if (*rec) {
        status_address((*rec)->status, a.family).reset();
        if (auto r = put_record(key, **rec); !r) return r;
    }
    report_.notes.push_back("VIP " + a.to_string() + " passed from MeshExternalService " + held_mesh + "/" + held_name +
                            " to " + std::string(mesh) + "/" + std::string(name));
    return {};
}

Res<void> WriteTxn::mirror_put(const MirrorEntry& entry)
{
    const auto& res = entry.resource;
    bool is_mes = res.kind == conf::Kind::mesh_external_service;
    auto key = resource_key(res.kind, res.mesh, res.name);
    if (is_mes)
        for (auto f : {vip::Family::v4, vip::Family::v6})
            if (const auto& given = f == vip::Family::v4 ? entry.ipv4 : entry.ipv6; given && given->family != f)
                return std::unexpected(Failure{EINVAL, "MeshExternalService " + res.mesh + "/" + res.name + ": " +
                                                           given->to_string() + " given as its IPv" + family_char(f) +
                                                           " VIP"});
    detail::Writer enc;
    encode_resource(enc, res);
    std::string bytes = std::move(enc.data());

    auto old = load(key);
    if (!old) return std::unexpected(old.error());
    Record rec;
    Outcome outcome = Outcome::created;
    bool reorders = true;  // the resource or its creation order changes: hostnames may move
    if (*old) {
        rec = std::move(**old);
        reorders = rec.resource_bytes != bytes || rec.created != entry.created;
        bool same_vips = !is_mes || (rec.status.ipv4 == entry.ipv4 && rec.status.ipv6 == entry.ipv6 &&
                                     rec.status.vip_error.empty());
        // Timestamps alone (a rewrite of the same value in etcd) change nothing readers see.
        outcome = !reorders && same_vips ? Outcome::unchanged : Outcome::configured;
    }
    largest_created_ = std::max(largest_created_, entry.created);
    if (outcome != Outcome::unchanged) {
        if (reorders && is_mes && !*old)
            touch_new_mes(res.mesh, key, entry.created);
        else if (reorders && res.kind != conf::Kind::secret)
            touch_mesh(res.mesh);
        rec.created = entry.created;
        rec.created_at = unix_seconds(entry.created_at);
        rec.modified_at = unix_seconds(entry.modified_at);
        rec.resource_bytes = std::move(bytes);
        if (is_mes) {
            for (auto f : {vip::Family::v4, vip::Family::v6}) {
                auto& current = status_address(rec.status, f);
                const auto& given = f == vip::Family::v4 ? entry.ipv4 : entry.ipv6;
                if (current == given) continue;
                if (current) {
                    if (auto r = free_vip(*current, false); !r) return r;
                    if (auto r = txn_.del(dbs_.vip_by_owner, owner_key(res.mesh, res.name, f)); !r)
                        return std::unexpected(r.error());
                    current.reset();
                }
                if (!given) continue;
                if (auto r = take_vip(*given, res.mesh, res.name); !r) return r;
                if (auto r = txn_.put(dbs_.owner_by_vip, vip_key(*given), owner_value(res.mesh, res.name)); !r) return r;
                if (auto r = txn_.put(dbs_.vip_by_owner, owner_key(res.mesh, res.name, f), given->bytes()); !r) return r;
                current = given;
            }
            rec.status.vip_error.clear();  // no local pool is asked: a missing VIP is etcd's to give
        }
        if (auto r = put_record(key, rec); !r) return r;
    }
    report_.changes.push_back(Change{res.kind, res.mesh, res.name, outcome, {}});
    return {};
}

Res<void> WriteTxn::mirror(const MirrorBatch& batch)
{
    if (auto before = sequence_before(); !before) return std::unexpected(before.error());
    if (auto r = record_pools(); !r) return r;
    // A whole snapshot follows a lost watch: whatever changed meanwhile is not told apart.
    if (batch.replace) recompute_all_ = true;
    if (batch.replace) {
        std::set<std::string> keep;
        for (const auto& e : batch.puts) keep.insert(resource_key(e.resource.kind, e.resource.mesh, e.resource.name));
        std::vector<std::string> doomed;
        auto scan = txn_.scan(dbs_.resources, "", [&](std::string_view key, std::string_view) {
            if (!keep.contains(std::string(key))) doomed.emplace_back(key);
            return true;
        });
        if (!scan) return scan;
        for (const auto& key : doomed) {
            if (key.empty()) continue;
            auto kind = static_cast<conf::Kind>(static_cast<unsigned char>(key[0]) - 1);
            auto [mesh, name] = split_owner(std::string_view(key).substr(1));
            if (auto r = mirror_remove(kind, mesh, name); !r) return r;
        }
    }
    for (const auto& k : batch.removals)
        if (auto r = mirror_remove(k.kind, k.mesh, k.name); !r) return r;
    for (const auto& e : batch.puts)
        if (auto r = mirror_put(e); !r) return r;

    // Records carry etcd's create revisions as their creation order. The sequence the local
    // writes number from is raised past them, so that a resource applied locally later (a
    // node taken out of cluster mode) is younger than every mirrored one, as it would be
    // in etcd, and check() can keep holding every record to created <= sequence.
    auto seq = txn_.get(dbs_.meta, "sequence");
    if (!seq) return std::unexpected(seq.error());
    std::uint64_t sequence = *seq && (*seq)->size() == 8 ? from_u64_be(**seq) : 0;
    if (largest_created_ > sequence)
        if (auto r = txn_.put(dbs_.meta, "sequence", u64_be(largest_created_)); !r) return r;

    // Written even when nothing else changed (the generation stays): the revision is where a
    // restarted watch resumes.
    if (auto r = txn_.put(dbs_.meta, "mirror_revision", u64_be(static_cast<std::uint64_t>(batch.revision))); !r) return r;
    return txn_.put(dbs_.meta, "mirror_source", batch.source);
}

Res<void> WriteTxn::store_statuses(const std::string& mesh, std::vector<Loaded>& services,
                                   std::vector<conf::HostnameStatus>& statuses)
{
    // Drop the names that move first, then claim the new ones, so that a hostname passing
    // from one MES to another in this change ends up with its new holder.
    std::vector<std::size_t> changed;
    for (std::size_t i = 0; i < services.size(); ++i)
        if (statuses[i] != services[i].record.status.hostnames) changed.push_back(i);
    for (std::size_t i : changed) {
        for (const auto& addr : services[i].record.status.hostnames.addresses) {
            auto hkey = hostname_key(addr.hostname, mesh);
            auto holder = txn_.get(dbs_.hostnames, hkey);
            if (!holder) return std::unexpected(holder.error());
            if (*holder && **holder == services[i].resource.name)
                if (auto r = txn_.del(dbs_.hostnames, hkey); !r) return std::unexpected(r.error());
        }
    }
    for (std::size_t i : changed) {
        for (const auto& addr : statuses[i].addresses)
            if (auto r = txn_.put(dbs_.hostnames, hostname_key(addr.hostname, mesh), services[i].resource.name); !r)
                return r;
        services[i].record.status.hostnames = std::move(statuses[i]);
        if (auto r = put_record(services[i].key, services[i].record); !r) return r;
    }
    return {};
}

// The generators that serve `mesh`: those of no mesh (Kuma's, serving every mesh) and those
// written with this one.
Res<void> load_generators(const Txn& txn, std::string_view mesh, std::vector<Loaded>& out)
{
    if (auto r = load_kind(txn, conf::Kind::hostname_generator, "", out); !r) return r;
    if (mesh.empty()) return {};
    return load_kind(txn, conf::Kind::hostname_generator, mesh, out);
}

Res<std::set<std::string>> WriteTxn::meshes_with_mes()
{
    std::set<std::string> out;
    std::string prefix = kind_prefix(conf::Kind::mesh_external_service);
    auto scan = txn_.scan(dbs_.resources, prefix, [&](std::string_view key, std::string_view) {
        out.insert(std::string(split_owner(key.substr(prefix.size())).first));
        return true;
    });
    if (!scan) return std::unexpected(scan.error());
    return out;
}

Res<void> WriteTxn::recompute(const std::string& mesh)
{
    std::vector<Loaded> generators, services;
    if (auto r = load_generators(txn_, mesh, generators); !r) return r;
    if (auto r = load_kind(txn_, conf::Kind::mesh_external_service, mesh, services); !r) return r;

    std::vector<conf::Ordered> gen_in, mes_in;
    for (const auto& g : generators) gen_in.push_back(conf::Ordered{&g.resource, g.record.created});
    for (const auto& s : services) mes_in.push_back(conf::Ordered{&s.resource, s.record.created});
    auto statuses = conf::generate_hostnames(gen_in, mes_in, {}, options_.zone);
    return store_statuses(mesh, services, statuses);
}

// The hostnames of `keys`, MES new to `mesh` and younger than every stored resource, when
// nothing else of the mesh changed: the same statuses and index as recompute(mesh), without
// decoding the mesh's other MES. Their statuses cannot change: each name a new MES claims is
// one none of them renders (it would hold it, or see it held, and the index would say so),
// and within one generator the new MES come after them. What can differ is the order of
// generators: a new MES that renders a held name through an OLDER generator than the one
// its holder claimed it through would take it first in the full generation, and move it.
// That case, and anything the index and statuses do not explain, falls back to recompute.
Res<void> WriteTxn::generate_for_new(const std::string& mesh, const std::vector<std::string>& keys)
{
    std::vector<Loaded> generators, services;
    if (auto r = load_generators(txn_, mesh, generators); !r) return r;
    if (generators.empty()) return {};  // nothing to generate, nothing held
    std::set<std::string> keys_seen;
    for (const auto& key : keys) {
        if (!keys_seen.insert(key).second) continue;
        auto rec = load(key);
        if (!rec) return std::unexpected(rec.error());
        if (!*rec) return recompute(mesh);
        auto res = read_resource(**rec);
        if (!res) return std::unexpected(res.error());
        services.push_back(Loaded{key, std::move(**rec), std::move(*res)});
    }

    // Generator name -> its place in the generation order (conf::order_key).
    std::vector<conf::GenerationOrder> order;
    for (const auto& g : generators) order.push_back(conf::order_key(conf::Ordered{&g.resource, g.record.created}));
    std::ranges::sort(order);
    std::map<std::string, std::size_t> rank;
    for (std::size_t i = 0; i < order.size(); ++i) rank.emplace(order[i].name, i);

    std::set<std::string> new_names;
    for (const auto& s : services) new_names.insert(s.resource.name);
    std::optional<Failure> failure;
    bool fall_back = false;
    auto claimed_by = [&](const std::string& hostname, const conf::Resource& generator) -> std::optional<std::string> {
        if (failure || fall_back) return std::nullopt;  // the result is thrown away
        auto holder = txn_.get(dbs_.hostnames, hostname_key(hostname, mesh));
        if (!holder) {
            failure = holder.error();
            return std::nullopt;
        }
        if (!*holder) return std::nullopt;
        std::string name(**holder);
        auto held = new_names.contains(name) ? Res<std::optional<Record>>(std::optional<Record>{})
                                             : load(resource_key(conf::Kind::mesh_external_service, mesh, name));
        if (!held) {
            failure = held.error();
            return std::nullopt;
        }
        // The generator its holder claimed it through first: the earliest one listing it.
        std::optional<std::size_t> first;
        if (*held)
            for (const auto& addr : (*held)->status.hostnames.addresses)
                if (auto it = rank.find(addr.generator); addr.hostname == hostname && it != rank.end())
                    first = std::min(first.value_or(it->second), it->second);
        auto mine = rank.find(generator.name);
        if (!first || mine == rank.end() || *first > mine->second) fall_back = true;
        return name;
    };

    std::vector<conf::Ordered> gen_in, mes_in;
    for (const auto& g : generators) gen_in.push_back(conf::Ordered{&g.resource, g.record.created});
    for (const auto& s : services) mes_in.push_back(conf::Ordered{&s.resource, s.record.created});
    auto statuses = conf::generate_hostnames(gen_in, mes_in, claimed_by, options_.zone);
    if (failure) return std::unexpected(*failure);
    if (fall_back) return recompute(mesh);
    return store_statuses(mesh, services, statuses);
}

Res<void> WriteTxn::finish()
{
    // A generator of no mesh serves every mesh: each that has a MES is generated again.
    if (dirty_meshes_.erase("")) {
        auto meshes = meshes_with_mes();
        if (!meshes) return std::unexpected(meshes.error());
        dirty_meshes_.merge(*meshes);
    }
    for (const auto& mesh : dirty_meshes_)
        if (auto r = recompute(mesh); !r) return r;
    for (const auto& [mesh, keys] : new_mes_) {
        if (dirty_meshes_.contains(mesh)) continue;  // done above
        if (auto r = recompute_all_ ? recompute(mesh) : generate_for_new(mesh, keys); !r) return r;
    }
    // Statuses as they stand after the whole write.
    for (auto& change : report_.changes) {
        if (change.kind != conf::Kind::mesh_external_service || change.outcome == Outcome::deleted) continue;
        auto key = resource_key(change.kind, change.mesh, change.name);
        auto bytes = txn_.get(dbs_.resources, key);
        if (!bytes) return std::unexpected(bytes.error());
        if (!*bytes) continue;
        auto rec = read_record(**bytes, key);
        if (!rec) return std::unexpected(rec.error());
        change.status = rec->status;
    }
    auto gen = txn_.get(dbs_.meta, "generation");
    if (!gen) return std::unexpected(gen.error());
    std::uint64_t generation = *gen && (*gen)->size() == 8 ? from_u64_be(**gen) : 0;
    if (changed_) {
        ++generation;
        if (auto r = txn_.put(dbs_.meta, "generation", u64_be(generation)); !r) return r;
    }
    report_.generation = generation;
    return {};
}

}  // namespace

Pools Pools::from(const conf::Config& config)
{
    return Pools{config.vip.ipv4, config.vip.ipv6, config.vip.quarantine};
}

std::string_view outcome_name(Outcome o)
{
    switch (o) {
    case Outcome::created: return "created";
    case Outcome::configured: return "configured";
    case Outcome::unchanged: return "unchanged";
    case Outcome::deleted: return "deleted";
    }
    return "?";
}

// ---- The environment ---------------------------------------------------------------------

struct Store::Impl {
    MDB_env* env = nullptr;
    Dbs dbs;
    Options options;
    std::string read_only;  // why the environment was opened MDB_RDONLY; empty when writable

    ~Impl()
    {
        if (env) mdb_env_close(env);
    }

    // Transactions open in this process (Dbs::open_txns points here). LMDB lets the map be
    // resized only while none is open: a begin that finds the map grown by another process
    // takes the new size only then, and otherwise fails as map_resized, to be tried again
    // once the caller's own snapshot is let go (a read) or on the loop (a write off it).
    // A begin holds `resize_mutex` shared, a resize holds it alone: none starts meanwhile.
    mutable std::atomic<int> open_txns{0};
    mutable std::shared_mutex resize_mutex;

    Res<MDB_txn*> begin(bool write, bool may_resize = true) const
    {
        // A transaction starts by reading the meta pages through the map. A fault there would
        // leave its reader slot taken for good (the jump skips LMDB's cleanup), and a mesd
        // polling a file cut to nothing would run out of slots: look at the size first.
        mdb_filehandle_t fd = -1;
        struct stat st {};
        if (mdb_env_get_fd(env, &fd) == 0 && ::fstat(fd, &st) == 0 && st.st_size < 2 * ::sysconf(_SC_PAGESIZE))
            return std::unexpected(Failure{map_fault, std::string(write ? "begin a write" : "begin a read") +
                                                          ": data.mdb is cut short, shorter than its two meta pages"});
        bool cleared = false;
        for (int attempt = 0; attempt < 4; ++attempt) {
            MDB_txn* txn = nullptr;
            int rc = 0;
            {
                std::shared_lock begun(resize_mutex);
                // A write's begin is not guarded: a jump out of it would leave the writer's
                // lock held by this live process, and every later write waiting for it.
                rc = write ? mdb_txn_begin(env, nullptr, 0, &txn)
                           : guarded([&] { return mdb_txn_begin(env, nullptr, MDB_RDONLY, &txn); });
                if (rc == 0) {
                    ++open_txns;
                    return txn;
                }
            }
            // Another process grew the map: adopt its size and try again.
            if (rc == MDB_MAP_RESIZED) {
                std::unique_lock resizing(resize_mutex);
                if (!may_resize || open_txns.load() > 0)
                    return std::unexpected(Failure{MDB_MAP_RESIZED, std::string(write ? "begin a write" : "begin a read") +
                                                                        ": another process grew the store's map while this "
                                                                        "one has a transaction open; tried again after it"});
                guarded([&] { return mdb_env_set_mapsize(env, 0); });
                continue;
            }
            // Every slot taken: those of processes killed mid-read stay taken for as long as
            // any process keeps the environment open. Free them and try once more.
            if (rc == MDB_READERS_FULL && !cleared) {
                cleared = true;
                clear_stale_readers();
                continue;
            }
            return std::unexpected(from_mdb(rc, write ? "begin a write" : "begin a read"));
        }
        return std::unexpected(Failure{MDB_MAP_RESIZED, "begin: the store's map keeps changing size"});
    }

    std::size_t clear_stale_readers() const
    {
        int dead = 0;
        if (mdb_reader_check(env, &dead) != 0) return 0;
        return static_cast<std::size_t>(dead);
    }

    std::string reserve_path() const { return options.data_dir + "/space.reserve"; }

    // Sets the reserve aside again when there is room for it (a stat when it is there).
    void keep_reserve() const
    {
        if (!read_only.empty() || options.reserve_bytes == 0) return;
        auto path = reserve_path();
        struct stat st {};
        // Its blocks, not its size: a copy made sparse (cp --sparse, rsync -S, tar) holds none
        // to give back.
        if (::stat(path.c_str(), &st) == 0 && static_cast<std::size_t>(st.st_blocks) * 512 >= options.reserve_bytes) return;
        int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
        if (fd < 0) return;
        // Allocated, not sparse: the blocks must be there to give back.
        int rc = ::posix_fallocate(fd, 0, static_cast<off_t>(options.reserve_bytes));
        ::close(fd);
        if (rc != 0) ::unlink(path.c_str());
    }

    bool out_of_space(const Failure& f, std::uint64_t* free_bytes = nullptr) const
    {
        struct statvfs fs {};
        bool have_fs = ::statvfs(options.data_dir.c_str(), &fs) == 0;
        std::uint64_t bytes = have_fs ? std::uint64_t{fs.f_bavail} * fs.f_frsize : 0;
        if (free_bytes) *free_bytes = bytes;
        return f.code == ENOSPC || (f.code == EIO && have_fs && bytes < no_space_below);
    }

    // Why a write failed, in words. LMDB reports a short write(2) as EIO (mdb_page_flush),
    // which is how a full file system usually shows: the free space tells them apart.
    Error write_error(const Failure& f) const
    {
        std::uint64_t free_bytes = 0;
        if (out_of_space(f, &free_bytes)) {
            return Error{"store " + options.data_dir + ": no space left on device (" + std::to_string(free_bytes) +
                         " bytes free); the store is unchanged. Free space on its file system, or delete resources: "
                         "a delete or a shrinking prune reuses the pages the store has already freed"};
        }
        if (f.code == EIO)
            return Error{f.message + " (store " + options.data_dir + ", " + std::to_string(free_bytes) + " bytes free)"};
        return to_error(f, dbs);
    }
    // A commit writes its dirty pages and two meta pages; with less than this free, an EIO
    // from a write is taken for a full file system.
    static constexpr std::uint64_t no_space_below = std::uint64_t{1} << 20;

    Res<void> grow()
    {
        std::unique_lock resizing(resize_mutex);
        if (open_txns.load() > 0)
            return std::unexpected(Failure{MDB_MAP_FULL, "grow the map: a read of this process is open; tried again after it"});
        MDB_envinfo info{};
        if (int rc = guarded([&] { return mdb_env_info(env, &info); }); rc != 0)
            return std::unexpected(from_mdb(rc, "grow the map"));
        std::size_t next = std::min(info.me_mapsize * 2, options.max_map_bytes);
        if (next <= info.me_mapsize)
            return std::unexpected(Failure{MDB_MAP_FULL, "the store has reached its maximum size of " +
                                                             std::to_string(options.max_map_bytes) + " bytes"});
        int rc = mdb_env_set_mapsize(env, next);
        if (rc != 0) return std::unexpected(from_mdb(rc, "grow the map"));
        return {};
    }

    // Runs `body` in a write transaction, growing the map and re-running it when full.
    // `shrinks`: a delete or prune, which may give up the space reserve to get done.
    template <class Body>
    Result<WriteReport> write(const WriteOptions& write_options, bool shrinks, Body&& body)
    {
        bool used_reserve = false;
        if (!read_only.empty())
            return std::unexpected(Error{"store " + options.data_dir + " is read-only (" + read_only +
                                         "): nothing can be written to it"});
        auto pools = parse_pools(write_options.pools);
        if (!pools) return std::unexpected(to_error(pools.error(), dbs));
        bool off_loop = !write_options.grow_map;
        while (true) {
            auto raw = begin(true, !off_loop);
            if (!raw && off_loop && raw.error().code == MDB_MAP_RESIZED) {
                // Redone on the loop, where the new size can be taken (as for a map to grow).
                auto e = to_error(raw.error(), dbs);
                e.map_full = true;
                return std::unexpected(std::move(e));
            }
            if (!raw) return std::unexpected(write_error(raw.error()));
            Txn txn(*raw, dbs);
            WriteTxn w(txn, write_options, *pools);
            Res<void> done = body(w);
            if (done) done = w.finish();
            if (done) done = txn.commit();
            if (done) {
                if (used_reserve)
                    w.report().notes.push_back("the file system of store " + options.data_dir +
                                               " is full: this write used the space kept in reserve; free space "
                                               "there (the reserve is set aside again once there is room)");
                keep_reserve();
                return std::move(w.report());
            }
            txn.abort();
            if (shrinks && !used_reserve && out_of_space(done.error()) && ::unlink(reserve_path().c_str()) == 0) {
                used_reserve = true;
                continue;
            }
            if (done.error().code != MDB_MAP_FULL) return std::unexpected(write_error(done.error()));
            if (!write_options.grow_map) {
                auto e = to_error(done.error(), dbs);
                e.map_full = true;
                return std::unexpected(std::move(e));
            }
            if (auto g = grow(); !g) return std::unexpected(to_error(g.error(), dbs));
        }
    }
};

Store::Store(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Store::~Store() = default;

const std::string& Store::data_dir() const { return impl_->options.data_dir; }
const std::string& Store::read_only() const { return impl_->read_only; }
std::size_t Store::clear_stale_readers() const { return impl_->clear_stale_readers(); }

Readers Store::readers() const
{
    Readers r;
    unsigned max = 0;
    mdb_env_get_maxreaders(impl_->env, &max);
    r.max = max;
    // mdb_reader_list prints a header line, then one line per slot held.
    std::size_t lines = 0;
    mdb_reader_list(
        impl_->env,
        [](const char* msg, void* ctx) -> int {
            auto* n = static_cast<std::size_t*>(ctx);
            for (const char* p = msg; *p; ++p)
                if (*p == '\n') ++*n;
            if (std::strstr(msg, "(no ")) *n = 1;  // "(no active readers)", "(no reader locks)"
            return 0;
        },
        &lines);
    r.in_use = lines > 0 ? lines - 1 : 0;
    return r;
}

Result<std::unique_ptr<Store>> Store::open(const Options& options)
{
    namespace fs = std::filesystem;
    std::error_code ec;
    if (!fs::exists(options.data_dir, ec)) {
        // The store holds Secrets: the directory is made 0700 at once (a umask can only take
        // bits away), never made with the umask's mode and narrowed after.
        fs::path dir(options.data_dir);
        if (!dir.has_filename()) dir = dir.parent_path();  // "DIR/"
        if (auto parent = dir.parent_path(); !parent.empty()) fs::create_directories(parent, ec);
        if (!ec && ::mkdir(options.data_dir.c_str(), 0700) != 0 && errno != EEXIST)
            ec = std::error_code(errno, std::generic_category());
        if (ec) return std::unexpected(Error{"cannot create data dir " + options.data_dir + ": " + ec.message()});
        ::chmod(options.data_dir.c_str(), 0700);  // a umask taking the owner's bits too
    } else if (!fs::is_directory(options.data_dir, ec)) {
        return std::unexpected(Error{"data dir " + options.data_dir + " is not a directory"});
    }

    // What to do about a damaged store, said once for every way of finding it.
    auto damage_advice = [&](int code) -> std::string {
        if (!is_damage(code)) return "";
        return "; restore " + options.data_dir + " from a backup, or move it aside and re-apply the resources "
               "(mesctl apply -f ...) into a fresh data dir";
    };
    if (auto verified = verify_data_file(options.data_dir + "/data.mdb"); !verified)
        return std::unexpected(Error{"store " + options.data_dir + ": " + verified.error().message +
                                     damage_advice(verified.error().code)});

    auto impl = std::make_unique<Impl>();
    impl->options = options;
    impl->dbs.data_dir = &impl->options.data_dir;
    impl->dbs.open_txns = &impl->open_txns;
    auto fail = [&](int rc, std::string_view what) {
        return std::unexpected(Error{"store " + options.data_dir + ": " + from_mdb(rc, what).message + damage_advice(rc)});
    };
    // MDB_NOTLS: read transactions belong to their Snapshot, not to a thread.
    // MDB_NORDAHEAD: lookups are random; read-around would map in pages of the other
    // databases around each one touched (at 100,000 MES the whole file ends up resident).
    auto open_env = [&](unsigned extra) {
        if (impl->env) mdb_env_close(impl->env);  // LMDB wants a failed open's handle discarded
        impl->env = nullptr;
        if (int rc = mdb_env_create(&impl->env); rc != 0) return rc;
        mdb_env_set_maxdbs(impl->env, 8);
        mdb_env_set_assert(impl->env, on_lmdb_assert);
        mdb_env_set_mapsize(impl->env, options.initial_map_bytes);
        return guarded([&] { return mdb_env_open(impl->env, options.data_dir.c_str(), MDB_NOTLS | MDB_NORDAHEAD | extra, 0600); });
    };
    int rc = open_env(0);
    if (rc == EROFS || rc == EACCES) {
        // What cannot be written can still be served: DNS answers from the last state, and
        // `mesctl get` shows it. On a read-only file system LMDB reads without its lock file;
        // a lock file that cannot be written is not used at all (MDB_NOLOCK), which is safe
        // as long as nothing writes the store meanwhile.
        impl->read_only = rc == EROFS ? "read-only file system" : "permission denied";
        rc = open_env(MDB_RDONLY);
        if (rc == EACCES) {
            impl->read_only = "permission denied; read without the lock file";
            rc = open_env(MDB_RDONLY | MDB_NOLOCK);
        }
    }
    if (rc != 0) return fail(rc, "open");
    impl->clear_stale_readers();

    auto raw = impl->begin(impl->read_only.empty());
    if (!raw)
        return std::unexpected(Error{"store " + options.data_dir + ": " + raw.error().message + damage_advice(raw.error().code)});
    MDB_txn* txn = *raw;
    unsigned create = impl->read_only.empty() ? MDB_CREATE : 0;
    auto open_db = [&](const char* name, MDB_dbi& dbi) {
        // Creating a database writes: not guarded, as no write is (store/lmdb.cpp).
        return create ? mdb_dbi_open(txn, name, create, &dbi) : guarded([&] { return mdb_dbi_open(txn, name, 0, &dbi); });
    };
    if ((rc = open_db("resources", impl->dbs.resources)) || (rc = open_db("vip_by_owner", impl->dbs.vip_by_owner)) ||
        (rc = open_db("owner_by_vip", impl->dbs.owner_by_vip)) || (rc = open_db("released", impl->dbs.released)) ||
        (rc = open_db("quarantine_by_vip", impl->dbs.quarantine_by_vip)) ||
        (rc = open_db("hostnames", impl->dbs.hostnames)) || (rc = open_db("meta", impl->dbs.meta))) {
        --impl->open_txns;
        mdb_txn_abort(txn);
        if (rc == MDB_NOTFOUND)
            return std::unexpected(Error{"store " + options.data_dir + " is read-only (" + impl->read_only +
                                         ") and was never written: there is nothing to read"});
        return fail(rc, "open databases");
    }
    Txn t(txn, impl->dbs);
    auto schema = t.get(impl->dbs.meta, "schema");
    if (!schema) return fail(schema.error().code, "read the schema");
    if (!*schema) {
        if (!impl->read_only.empty())
            return std::unexpected(Error{"store " + options.data_dir + " is read-only (" + impl->read_only +
                                         ") and was never written: there is nothing to read"});
        if (auto r = t.put(impl->dbs.meta, "schema", schema_version); !r) return std::unexpected(impl->write_error(r.error()));
    } else if (**schema != schema_version) {
        return std::unexpected(Error{"store " + options.data_dir + " has schema version " + std::string(**schema) +
                                     "; this mesd reads version " + std::string(schema_version)});
    }
    // Committing a read transaction keeps its database handles for the environment.
    if (auto r = t.commit(); !r) return std::unexpected(impl->write_error(r.error()));
    impl->keep_reserve();
    return std::unique_ptr<Store>(new Store(std::move(impl)));
}

Result<WriteReport> Store::apply(std::span<const conf::Resource> resources, const WriteOptions& options)
{
    return impl_->write(options, options.prune, [&](WriteTxn& w) -> Res<void> {
        if (auto r = w.sync_pools(); !r) return r;
        std::set<std::string> keep;
        for (const auto& res : resources) {
            if (auto r = w.upsert(res); !r) return r;
            keep.insert(resource_key(res.kind, res.mesh, res.name));
        }
        if (options.prune)
            if (auto r = w.prune(keep); !r) return r;
        return {};
    });
}

Result<WriteReport> Store::remove(conf::Kind kind, std::string_view mesh, std::string_view name,
                                  const WriteOptions& options)
{
    return impl_->write(options, true, [&](WriteTxn& w) -> Res<void> {
        if (auto r = w.sync_pools(); !r) return r;
        return w.erase(kind, mesh, name);
    });
}

Result<WriteReport> Store::sync_pools(const WriteOptions& options)
{
    return impl_->write(options, false, [&](WriteTxn& w) { return w.sync_pools(); });
}

Result<WriteReport> Store::mirror(const MirrorBatch& batch, const WriteOptions& options)
{
    // Changes are reported in the order they are made: removals (those of `replace` first),
    // then puts in batch order.
    bool shrinks = batch.replace || !batch.removals.empty();
    return impl_->write(options, shrinks, [&](WriteTxn& w) { return w.mirror(batch); });
}

Result<Usage> Store::usage() const
{
    auto raw = impl_->begin(false);
    if (!raw) return std::unexpected(to_error(raw.error(), impl_->dbs));
    Txn txn(*raw, impl_->dbs);
    Usage u;
    MDB_envinfo info{};
    MDB_stat main{};
    if (int rc = guarded([&] { return mdb_env_info(impl_->env, &info) | mdb_env_stat(impl_->env, &main); }); rc != 0)
        return std::unexpected(to_error(from_mdb(rc, "stat"), impl_->dbs));
    u.map_bytes = info.me_mapsize;
    auto pages = [](const MDB_stat& s) { return s.ms_branch_pages + s.ms_leaf_pages + s.ms_overflow_pages; };
    u.bytes = pages(main) * main.ms_psize;
    const auto& d = impl_->dbs;
    for (MDB_dbi dbi : {d.resources, d.vip_by_owner, d.owner_by_vip, d.released, d.quarantine_by_vip, d.hostnames, d.meta}) {
        MDB_stat s{};
        if (int rc = guarded([&] { return mdb_stat(txn.raw(), dbi, &s); }); rc != 0)
            return std::unexpected(to_error(from_mdb(rc, "stat"), impl_->dbs));
        u.bytes += pages(s) * s.ms_psize;
        if (dbi == d.resources) u.resources = s.ms_entries;
        if (dbi == d.owner_by_vip) u.vips = s.ms_entries;
    }
    return u;
}

void Store::unmap_pages() const
{
    // LMDB does not tell where its map is (me_mapaddr is only set with MDB_FIXEDMAP), so the
    // mapping of data.mdb is found by device and inode in /proc/self/maps. The map is
    // read-only (no MDB_WRITEMAP: writes go through write(2)), so zapping the page-table
    // entries of this shared file mapping loses nothing.
    struct stat file {};
    if (::stat((impl_->options.data_dir + "/data.mdb").c_str(), &file) != 0) return;
    std::FILE* maps = std::fopen("/proc/self/maps", "r");
    if (!maps) return;
    char line[4096];
    while (std::fgets(line, sizeof line, maps)) {
        unsigned long begin = 0, end = 0, offset = 0, inode = 0;
        unsigned major = 0, minor = 0;
        char perms[8] = {};
        if (std::sscanf(line, "%lx-%lx %7s %lx %x:%x %lu", &begin, &end, perms, &offset, &major, &minor, &inode) != 7)
            continue;
        if (inode == file.st_ino && makedev(major, minor) == file.st_dev)
            ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);
    }
    std::fclose(maps);
}

// ---- Reading -----------------------------------------------------------------------------

struct Snapshot::Impl {
    Txn txn;
    Impl(MDB_txn* raw, const Dbs& dbs) : txn(raw, dbs) {}
};

Snapshot::Snapshot(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Snapshot::Snapshot(Snapshot&&) noexcept = default;
Snapshot& Snapshot::operator=(Snapshot&&) noexcept = default;
Snapshot::~Snapshot() = default;

Result<Snapshot> Store::snapshot() const
{
    auto raw = impl_->begin(false);
    if (!raw) return std::unexpected(to_error(raw.error(), impl_->dbs));
    return Snapshot(std::make_unique<Snapshot::Impl>(*raw, impl_->dbs));
}

Result<std::vector<Entry>> Snapshot::list(std::optional<conf::Kind> kind, std::optional<std::string_view> mesh) const
{
    std::vector<Entry> out;
    std::string prefix;
    if (kind) prefix = mesh ? resource_key(*kind, *mesh, "") : kind_prefix(*kind);
    auto scan = scan_records(impl_->txn, prefix, [&](std::string_view, Record rec, conf::Resource res) {
        if (!mesh || res.mesh == *mesh) out.push_back(to_entry(std::move(res), rec));
    });
    if (!scan) return std::unexpected(to_error(scan.error(), impl_->txn.dbs()));
    return out;
}

Result<std::optional<Entry>> Snapshot::get(conf::Kind kind, std::string_view mesh, std::string_view name) const
{
    const auto& txn = impl_->txn;
    auto key = resource_key(kind, mesh, name);
    auto bytes = txn.get(txn.dbs().resources, key);
    if (!bytes) return std::unexpected(to_error(bytes.error(), impl_->txn.dbs()));
    if (!*bytes) return std::optional<Entry>{};
    auto rec = read_record(**bytes, key);
    if (!rec) return std::unexpected(to_error(rec.error(), impl_->txn.dbs()));
    auto res = read_resource(*rec);
    if (!res) return std::unexpected(to_error(res.error(), impl_->txn.dbs()));
    return std::optional<Entry>{to_entry(std::move(*res), *rec)};
}

Result<bool> Snapshot::has_secret(std::string_view mesh, std::string_view name) const
{
    const auto& txn = impl_->txn;
    auto bytes = txn.get(txn.dbs().resources, resource_key(conf::Kind::secret, mesh, name));
    if (!bytes) return std::unexpected(to_error(bytes.error(), impl_->txn.dbs()));
    return bytes->has_value();
}

namespace {

Res<Owner> owner_with_vips(const Txn& txn, std::string mesh, std::string name)
{
    Owner o{std::move(mesh), std::move(name), {}, {}};
    for (auto f : {vip::Family::v4, vip::Family::v6}) {
        auto v = txn.get(txn.dbs().vip_by_owner, owner_key(o.mesh, o.name, f));
        if (!v) return std::unexpected(v.error());
        if (*v) (f == vip::Family::v4 ? o.ipv4 : o.ipv6) = vip::Address::from_bytes(**v);
    }
    return o;
}

}  // namespace

Result<std::vector<Owner>> Snapshot::lookup_hostname(std::string_view hostname) const
{
    const auto& txn = impl_->txn;
    std::string prefix = lowercase(hostname);
    if (!prefix.empty() && prefix.back() == '.') prefix.pop_back();
    prefix.push_back(sep);
    std::vector<std::pair<std::string, std::string>> found;
    auto scan = txn.scan(txn.dbs().hostnames, prefix, [&](std::string_view key, std::string_view name) {
        found.emplace_back(std::string(key.substr(prefix.size())), std::string(name));
        return true;
    });
    if (!scan) return std::unexpected(to_error(scan.error(), impl_->txn.dbs()));
    std::vector<Owner> out;
    for (auto& [mesh, name] : found) {
        auto o = owner_with_vips(txn, std::move(mesh), std::move(name));
        if (!o) return std::unexpected(to_error(o.error(), impl_->txn.dbs()));
        out.push_back(std::move(*o));
    }
    return out;
}

Result<std::optional<Owner>> Snapshot::lookup_hostname_in(std::string_view hostname, std::string_view mesh) const
{
    const auto& txn = impl_->txn;
    std::string key;
    key.reserve(hostname.size() + mesh.size() + 1);
    key.append(hostname);
    key.push_back(sep);
    key.append(mesh);
    auto name = txn.get(txn.dbs().hostnames, key);
    if (!name) return std::unexpected(to_error(name.error(), impl_->txn.dbs()));
    if (!*name) return std::optional<Owner>{};
    auto o = owner_with_vips(txn, std::string(mesh), std::string(**name));
    if (!o) return std::unexpected(to_error(o.error(), impl_->txn.dbs()));
    return std::optional<Owner>{std::move(*o)};
}

Result<std::optional<Owner>> Snapshot::owner_of(const vip::Address& address) const
{
    const auto& txn = impl_->txn;
    auto v = txn.get(txn.dbs().owner_by_vip, vip_key(address));
    if (!v) return std::unexpected(to_error(v.error(), impl_->txn.dbs()));
    if (!*v) return std::optional<Owner>{};
    auto [mesh, name] = split_owner(**v);
    auto o = owner_with_vips(txn, std::move(mesh), std::move(name));
    if (!o) return std::unexpected(to_error(o.error(), impl_->txn.dbs()));
    return std::optional<Owner>{std::move(*o)};
}

Result<std::vector<VipEntry>> Snapshot::vips() const
{
    const auto& txn = impl_->txn;
    std::vector<VipEntry> out;
    auto scan = txn.scan(txn.dbs().owner_by_vip, "", [&](std::string_view key, std::string_view owner) {
        if (auto a = address_from_vip_key(key)) {
            auto [mesh, name] = split_owner(owner);
            out.push_back(VipEntry{*a, std::move(mesh), std::move(name)});
        }
        return true;
    });
    if (!scan) return std::unexpected(to_error(scan.error(), impl_->txn.dbs()));
    return out;
}

Result<Snapshot::Counts> Snapshot::counts() const
{
    const auto& txn = impl_->txn;
    MDB_stat vips{}, hostnames{};
    if (int rc = guarded([&] { return mdb_stat(txn.raw(), txn.dbs().vip_by_owner, &vips); }); rc != 0) return std::unexpected(to_error(from_mdb(rc, "stat"), impl_->txn.dbs()));
    if (int rc = guarded([&] { return mdb_stat(txn.raw(), txn.dbs().hostnames, &hostnames); }); rc != 0) return std::unexpected(to_error(from_mdb(rc, "stat"), impl_->txn.dbs()));
    return Counts{vips.ms_entries, hostnames.ms_entries};
}

Result<void> Snapshot::scan_owner_vips(
    const std::function<void(std::string_view, std::string_view, const vip::Address&)>& fn) const
{
    const auto& txn = impl_->txn;
    auto scan = txn.scan(txn.dbs().vip_by_owner, "", [&](std::string_view key, std::string_view value) {
        // mesh \0 name \0 family
        auto first = key.find(sep);
        if (first == std::string_view::npos || key.size() < first + 3) return true;
        auto address = vip::Address::from_bytes(value);
        if (address) fn(key.substr(0, first), key.substr(first + 1, key.size() - first - 3), *address);
        return true;
    });
    if (!scan) return std::unexpected(to_error(scan.error(), impl_->txn.dbs()));
    return {};
}

Result<void> Snapshot::scan_hostnames(
    const std::function<void(std::string_view, std::string_view, std::string_view)>& fn) const
{
    const auto& txn = impl_->txn;
    auto scan = txn.scan(txn.dbs().hostnames, "", [&](std::string_view key, std::string_view name) {
        auto nul = key.find(sep);
        if (nul != std::string_view::npos) fn(key.substr(0, nul), key.substr(nul + 1), name);
        return true;
    });
    if (!scan) return std::unexpected(to_error(scan.error(), impl_->txn.dbs()));
    return {};
}

Result<std::vector<Quarantined>> Snapshot::quarantine() const
{
    const auto& txn = impl_->txn;
    std::vector<Quarantined> out;
    auto scan = txn.scan(txn.dbs().quarantine_by_vip, "", [&](std::string_view key, std::string_view when) {
        if (auto a = address_from_vip_key(key); a && when.size() == 8)
            out.push_back(Quarantined{*a, from_unix_seconds(static_cast<std::int64_t>(from_u64_be(when)))});
        return true;
    });
    if (!scan) return std::unexpected(to_error(scan.error(), impl_->txn.dbs()));
    return out;
}

Result<std::uint64_t> Snapshot::generation() const
{
    const auto& txn = impl_->txn;
    auto v = txn.get(txn.dbs().meta, "generation");
    if (!v) return std::unexpected(to_error(v.error(), impl_->txn.dbs()));
    return *v && (*v)->size() == 8 ? from_u64_be(**v) : std::uint64_t{0};
}

Result<Pools> Snapshot::pools() const
{
    const auto& txn = impl_->txn;
    Pools p;
    p.ipv4.clear();
    for (auto f : {vip::Family::v4, vip::Family::v6}) {
        auto v = txn.get(txn.dbs().meta, std::string("pool") + family_char(f));
        if (!v) return std::unexpected(to_error(v.error(), impl_->txn.dbs()));
        (f == vip::Family::v4 ? p.ipv4 : p.ipv6) = *v ? std::string(**v) : "";
    }
    return p;
}

Result<MirrorState> Snapshot::mirror_state() const
{
    const auto& txn = impl_->txn;
    MirrorState state;
    auto revision = txn.get(txn.dbs().meta, "mirror_revision");
    if (!revision) return std::unexpected(to_error(revision.error(), impl_->txn.dbs()));
    if (*revision && (*revision)->size() == 8) state.revision = static_cast<std::int64_t>(from_u64_be(**revision));
    auto source = txn.get(txn.dbs().meta, "mirror_source");
    if (!source) return std::unexpected(to_error(source.error(), impl_->txn.dbs()));
    if (*source) state.source = std::string(**source);
    return state;
}

Result<std::vector<std::string>> Snapshot::check() const
{
    const auto& txn = impl_->txn;
    const auto& dbs = txn.dbs();
    std::vector<std::string> problems;
    auto fail = [&](std::string s) { problems.push_back(std::move(s)); };

    auto recorded = pools();
    if (!recorded) return std::unexpected(recorded.error());
    auto pool4 = vip::Pool::parse(recorded->ipv4);
    auto pool6 = vip::Pool::parse(recorded->ipv6);
    auto pool_of = [&](vip::Family f) { return f == vip::Family::v4 ? pool4 : pool6; };
    // A mirrored store holds the VIPs etcd assigned, from the pools of whichever node claimed
    // them; this node's pools (the recorded ones) need not contain them. Such a store stays
    // exempt if it goes back to local writes: the VIPs it kept from etcd still stand.
    auto mirrored = txn.get(dbs.meta, "mirror_revision");
    if (!mirrored) return std::unexpected(to_error(mirrored.error(), impl_->txn.dbs()));
    bool vips_from_etcd = mirrored->has_value();
    // Local writes number records from the sequence, and a mirror raises it past etcd's
    // create revisions: a record above it would tie with the next resource created.
    auto seq = txn.get(dbs.meta, "sequence");
    if (!seq) return std::unexpected(to_error(seq.error(), impl_->txn.dbs()));
    std::uint64_t sequence = *seq && (*seq)->size() == 8 ? from_u64_be(**seq) : 0;

    // Records decode; MES statuses agree with the VIP and hostname indexes.
    std::map<std::pair<std::string, std::string>, std::string> hostname_holder;  // (mesh, hostname) -> MES
    std::set<std::string> mes_keys;
    auto scan = txn.scan(dbs.resources, "", [&](std::string_view key, std::string_view value) {
        auto rec = decode_record(value);
        if (!rec) {
            fail("a record cannot be decoded");
            return true;
        }
        Reader r(rec->resource_bytes);
        auto res = decode_resource(r);
        if (!res) {
            fail("a stored resource cannot be decoded");
            return true;
        }
        if (key != resource_key(res->kind, res->mesh, res->name))
            fail(std::string(conf::kind_name(res->kind)) + " " + res->mesh + "/" + res->name + " is stored under another key");
        if (rec->created > sequence)
            fail(std::string(conf::kind_name(res->kind)) + " " + res->mesh + "/" + res->name + " was created as " +
                 std::to_string(rec->created) + ", after the last sequence number " + std::to_string(sequence));
        if (res->kind != conf::Kind::mesh_external_service) return true;
        std::string who = "MeshExternalService " + res->mesh + "/" + res->name;
        mes_keys.insert(owner_value(res->mesh, res->name));
        for (auto f : {vip::Family::v4, vip::Family::v6}) {
            auto status_vip = f == vip::Family::v4 ? rec->status.ipv4 : rec->status.ipv6;
            auto by_owner = txn.get(dbs.vip_by_owner, owner_key(res->mesh, res->name, f));
            if (!by_owner) return false;
            std::optional<vip::Address> indexed = *by_owner ? vip::Address::from_bytes(**by_owner) : std::nullopt;
            if (status_vip != indexed)
                fail(who + ": status VIP " + (status_vip ? status_vip->to_string() : "none") +
                     " differs from the owner index (" + (indexed ? indexed->to_string() : "none") + ")");
            if (!status_vip) continue;
            auto owner = txn.get(dbs.owner_by_vip, vip_key(*status_vip));
            if (!owner || !*owner || **owner != owner_value(res->mesh, res->name))
                fail(who + ": VIP " + status_vip->to_string() + " is not recorded as its own");
            auto p = pool_of(f);
            if (!vips_from_etcd &&
                (!p || !p->contains(*status_vip) || *status_vip == p->network() || *status_vip == p->broadcast()))
                fail(who + ": VIP " + status_vip->to_string() + " is outside the pool " +
                     (p ? p->to_string() : std::string("(none)")));
            auto q = txn.get(dbs.quarantine_by_vip, vip_key(*status_vip));
            if (q && *q) fail(who + ": VIP " + status_vip->to_string() + " is both in use and in quarantine");
        }
        for (const auto& addr : rec->status.hostnames.addresses) {
            // One MES may hold a name through two generators that render it alike.
            auto [it, inserted] = hostname_holder.try_emplace({res->mesh, addr.hostname}, res->name);
            if (!inserted && it->second != res->name)
                fail("hostname " + addr.hostname + " is held by both " + it->second + " and " + res->name +
                     " in mesh " + res->mesh);
            auto idx = txn.get(dbs.hostnames, hostname_key(addr.hostname, res->mesh));
            if (!idx || !*idx || **idx != res->name)
                fail(who + ": hostname " + addr.hostname + " is missing from the hostname index");
        }
        return true;
    });
    if (!scan) return std::unexpected(to_error(scan.error(), impl_->txn.dbs()));

    // Every VIP has exactly one owner, and that owner exists and says so.
    auto vscan = txn.scan(dbs.owner_by_vip, "", [&](std::string_view key, std::string_view owner) {
        auto a = address_from_vip_key(key);
        if (!a) {
            fail("a VIP key cannot be decoded");
            return true;
        }
        if (!mes_keys.contains(std::string(owner))) {
            auto [mesh, name] = split_owner(owner);
            fail("VIP " + a->to_string() + " belongs to " + mesh + "/" + name + ", which does not exist");
            return true;
        }
        auto [mesh, name] = split_owner(owner);
        auto back = txn.get(dbs.vip_by_owner, owner_key(mesh, name, a->family));
        if (!back || !*back || **back != a->bytes())
            fail("VIP " + a->to_string() + " of " + mesh + "/" + name + " is missing from the owner index");
        return true;
    });
    if (!vscan) return std::unexpected(to_error(vscan.error(), impl_->txn.dbs()));
    auto oscan = txn.scan(dbs.vip_by_owner, "", [&](std::string_view key, std::string_view bytes) {
        auto a = vip::Address::from_bytes(bytes);
        auto owner = a ? txn.get(dbs.owner_by_vip, vip_key(*a)) : Res<std::optional<std::string_view>>{};
        std::string who(key.substr(0, key.rfind(sep)));
        for (auto& c : who)
            if (c == sep) c = '/';
        if (!a || !owner || !*owner || vip_key(*a).empty() || std::string_view(**owner) != key.substr(0, key.rfind(sep)))
            fail("the owner index entry of " + who + " has no matching VIP");
        return true;
    });
    if (!oscan) return std::unexpected(to_error(oscan.error(), impl_->txn.dbs()));

    // Hostname index entries point at MES that hold them.
    auto hscan = txn.scan(dbs.hostnames, "", [&](std::string_view key, std::string_view name) {
        auto nul = key.find(sep);
        std::string hostname(key.substr(0, nul));
        std::string mesh(nul == std::string_view::npos ? "" : key.substr(nul + 1));
        auto it = hostname_holder.find({mesh, hostname});
        if (it == hostname_holder.end() || it->second != name)
            fail("hostname index: " + hostname + " in mesh " + mesh + " points at " + std::string(name) +
                 ", which does not hold it");
        return true;
    });
    if (!hscan) return std::unexpected(to_error(hscan.error(), impl_->txn.dbs()));

    // The two quarantine indexes agree, and quarantined VIPs lie in their pool.
    std::size_t released_count = 0;
    auto rscan = txn.scan(dbs.released, "", [&](std::string_view key, std::string_view) {
        ++released_count;
        if (key.size() < 9) {
            fail("a quarantine entry cannot be decoded");
            return true;
        }
        auto a = vip::Address::from_bytes(key.substr(9));
        auto q = a ? txn.get(dbs.quarantine_by_vip, vip_key(*a)) : Res<std::optional<std::string_view>>{};
        if (!a || !q || !*q || **q != key.substr(1, 8))
            fail("quarantine entry " + (a ? a->to_string() : std::string("?")) + " is inconsistent");
        return true;
    });
    if (!rscan) return std::unexpected(to_error(rscan.error(), impl_->txn.dbs()));
    std::size_t by_vip_count = 0;
    auto qscan = txn.scan(dbs.quarantine_by_vip, "", [&](std::string_view key, std::string_view) {
        ++by_vip_count;
        auto a = address_from_vip_key(key);
        if (a && (!pool_of(a->family) || !pool_of(a->family)->contains(*a)))
            fail("quarantined VIP " + a->to_string() + " is outside its pool");
        return true;
    });
    if (!qscan) return std::unexpected(to_error(qscan.error(), impl_->txn.dbs()));
    if (released_count != by_vip_count)
        fail("the quarantine indexes disagree (" + std::to_string(released_count) + " vs " +
             std::to_string(by_vip_count) + " entries)");
    return problems;
}

}  // namespace store
