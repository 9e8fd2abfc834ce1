// cluster: the layout of mesd's keys in etcd and the writes of `mesctl` (see cluster.hpp).
#include "store/cluster.hpp"

#include "store/detail/codec.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <thread>

namespace store::cluster {

namespace {

using Clock = std::chrono::system_clock;

// Conflicting transactions are read again and retried; this many in a row for one batch
// means something keeps changing the same keys, and the user hears about it.
constexpr int max_attempts = 32;
// Applies of this many resources or more are written on this many connections at once.
constexpr std::size_t parallel_min = 256;
constexpr std::size_t parallel_writers = 4;

std::string_view kind_segment(conf::Kind kind)
{
    switch (kind) {
    case conf::Kind::mesh_external_service: return "meshexternalservice";
    case conf::Kind::hostname_generator: return "hostnamegenerator";
    case conf::Kind::secret: return "secret";
    }
    return "unknown";
}

std::int64_t unix_seconds(Clock::time_point t)
{
    return std::chrono::duration_cast<std::chrono::seconds>(t.time_since_epoch()).count();
}

std::string resource_bytes(const conf::Resource& r)
{
    detail::Writer w;
    detail::encode_resource(w, r);
    return std::move(w.data());
}

std::string owner_text(std::string_view mesh, std::string_view name) { return std::string(mesh) + "/" + std::string(name); }

std::string name_of(const ResourceKey& k) { return std::string(conf::kind_name(k.kind)) + " " + k.mesh + "/" + k.name; }


Error to_error(const etcd::Error& e) { return Error{"etcd: " + e.message}; }

std::optional<vip::Address>& address_of(MirrorEntry& e, vip::Family f) { return f == vip::Family::v4 ? e.ipv4 : e.ipv6; }

// The allocator's view of etcd: the VIPs and quarantine entries read once per call, plus the
// addresses this call has picked. A pick another writer beat us to is found by the
// transaction's compare, added here and picked again.
class TakenLedger final : public vip::Ledger {
public:
    explicit TakenLedger(std::set<vip::Address>& taken) : taken_(taken) {}
    bool in_use(const vip::Address& a) override { return taken_.contains(a); }
    bool quarantined(const vip::Address&) override { return false; }  // in `taken` too
    std::optional<vip::Address> cursor(vip::Family f) override
    {
        auto& c = f == vip::Family::v4 ? cursor4_ : cursor6_;
        return c;
    }
    void set_cursor(const vip::Address& a) override { (a.family == vip::Family::v4 ? cursor4_ : cursor6_) = a; }
    // Quarantine entries expire with their lease in etcd: nothing to take early.
    std::optional<std::pair<vip::Address, Clock::time_point>> oldest_released(vip::Family) override { return std::nullopt; }
    void release_from_quarantine(const vip::Address&) override {}

private:
    std::set<vip::Address>& taken_;
    std::optional<vip::Address> cursor4_, cursor6_;
};

}  // namespace

// ---- Keys and values ---------------------------------------------------------------------

std::string Layout::resource(conf::Kind kind, std::string_view mesh, std::string_view name) const
{
    return prefix_ + "res/" + std::string(mesh) + "/" + std::string(kind_segment(kind)) + "/" + std::string(name);
}

std::string Layout::resources_of(std::string_view mesh, conf::Kind kind) const
{
    return prefix_ + "res/" + std::string(mesh) + "/" + std::string(kind_segment(kind)) + "/";
}

std::optional<ResourceKey> Layout::parse_resource(std::string_view key) const
{
    std::string head = resources();
    if (!key.starts_with(head)) return std::nullopt;
    key.remove_prefix(head.size());
    auto slash1 = key.find('/');
    if (slash1 == std::string_view::npos) return std::nullopt;
    auto slash2 = key.find('/', slash1 + 1);
    if (slash2 == std::string_view::npos) return std::nullopt;
    auto kind = conf::kind_from_string(key.substr(slash1 + 1, slash2 - slash1 - 1));
    auto name = key.substr(slash2 + 1);
    // Only a HostnameGenerator may have no mesh (it serves every mesh, as in Kuma).
    bool no_mesh_ok = kind && *kind == conf::Kind::hostname_generator;
    if (!kind || (slash1 == 0 && !no_mesh_ok) || name.empty() || name.find('/') != std::string_view::npos)
        return std::nullopt;
    return ResourceKey{*kind, std::string(key.substr(0, slash1)), std::string(name)};
}

// Format 1: 'M' 1, created_at and modified_at (unix seconds, varints), a byte with bit 0 for
// an IPv4 VIP and bit 1 for IPv6, each address present (length-prefixed bytes), then the
// resource as the store encodes it.
std::string encode_value(const MirrorEntry& entry)
{
    detail::Writer w;
    w.u8('M');
    w.u8(1);
    w.varint(static_cast<std::uint64_t>(std::max<std::int64_t>(0, unix_seconds(entry.created_at))));
    w.varint(static_cast<std::uint64_t>(std::max<std::int64_t>(0, unix_seconds(entry.modified_at))));
    w.u8(static_cast<std::uint8_t>((entry.ipv4 ? 1 : 0) | (entry.ipv6 ? 2 : 0)));
    if (entry.ipv4) w.str(entry.ipv4->bytes());
    if (entry.ipv6) w.str(entry.ipv6->bytes());
    detail::encode_resource(w, entry.resource);
    return std::move(w.data());
}

std::optional<MirrorEntry> decode_value(std::string_view value, const ResourceKey& key, std::int64_t create_revision)
{
    detail::Reader r(value);
    auto magic = r.u8();
    auto format = r.u8();
    if (!magic || *magic != 'M' || !format || *format != 1) return std::nullopt;
    auto created_at = r.varint();
    auto modified_at = r.varint();
    auto families = r.u8();
    if (!created_at || !modified_at || !families || *families > 3) return std::nullopt;
    MirrorEntry e;
    e.created = static_cast<std::uint64_t>(std::max<std::int64_t>(0, create_revision));
    e.created_at = Clock::time_point(std::chrono::seconds(static_cast<std::int64_t>(*created_at & 0xffffffffffffull)));
    e.modified_at = Clock::time_point(std::chrono::seconds(static_cast<std::int64_t>(*modified_at & 0xffffffffffffull)));
    for (int bit : {1, 2}) {
        if (!(*families & bit)) continue;
        auto bytes = r.str();
        if (!bytes) return std::nullopt;
        auto a = vip::Address::from_bytes(*bytes);
        if (!a || (bit == 1) != (a->family == vip::Family::v4)) return std::nullopt;
        (bit == 1 ? e.ipv4 : e.ipv6) = *a;
    }
    auto res = detail::decode_resource(r);
    if (!res || r.remaining() != 0 || res->kind != key.kind || res->mesh != key.mesh || res->name != key.name)
        return std::nullopt;
    e.resource = std::move(*res);
    return e;
}

etcd::Options client_options(const conf::Config& config)
{
    const auto& c = config.cluster.etcd;
    etcd::Options o;
    o.endpoints = c.endpoints;
    if (c.tls) o.tls = etcd::Tls{c.ca_file, c.cert_file, c.key_file};
    o.username = c.username;
    o.password = c.password;
    o.dial_timeout = std::chrono::duration_cast<std::chrono::milliseconds>(c.dial_timeout);
    o.request_timeout = std::chrono::duration_cast<std::chrono::milliseconds>(c.request_timeout);
    return o;
}

std::string describe(const etcd::Options& options, const etcd::Error& error)
{
    std::string list;
    for (const auto& e : options.endpoints) list += (list.empty() ? "" : ",") + e;
    return "etcd at " + list + ": " + error.message;
}

// ---- Creating what is absent -------------------------------------------------------------

Result<std::vector<ResourceKey>> create_absent(etcd::Client& client, const Layout& layout,
                                               std::span<const conf::Resource> resources)
{
    struct Want {
        ResourceKey key;
        std::string etcd_key;
        std::string value;
    };
    std::vector<Want> pending;
    auto now = Clock::now();
    for (const auto& r : resources) {
        // A MES would need a VIP claimed with it: that is the Writer's work, not this.
        if (r.kind == conf::Kind::mesh_external_service)
            return std::unexpected(Error{"create_absent: " + name_of(ResourceKey{r.kind, r.mesh, r.name}) +
                                         " needs a VIP; apply it instead"});
        pending.push_back(Want{ResourceKey{r.kind, r.mesh, r.name}, layout.resource(r.kind, r.mesh, r.name),
                               encode_value(MirrorEntry{r, 0, now, now, std::nullopt, std::nullopt})});
    }
    std::vector<ResourceKey> created;
    // Each lost transaction finds at least one key present and drops it: this ends.
    while (!pending.empty()) {
        using C = etcd::Compare;
        std::vector<C> compare;
        std::vector<etcd::Operation> ops, reads;
        for (const auto& w : pending) {
            compare.push_back(C{w.etcd_key, C::Target::create, C::Op::equal, 0, {}});
            ops.push_back(etcd::Operation{etcd::Operation::Type::put, w.etcd_key, w.value, {}, 0});
            reads.push_back(etcd::Operation{etcd::Operation::Type::range, w.etcd_key, {}, {}, 0});
        }
        auto r = client.txn(compare, ops, reads);
        if (!r) return std::unexpected(to_error(r.error()));
        if (r->succeeded) {
            for (auto& w : pending) created.push_back(std::move(w.key));
            break;
        }
        if (r->ranges.size() != pending.size()) return std::unexpected(Error{"etcd: a failed write answered out of step"});
        std::vector<Want> absent;
        for (std::size_t k = 0; k < pending.size(); ++k)
            if (r->ranges[k].kvs.empty()) absent.push_back(std::move(pending[k]));
        if (absent.size() == pending.size())
            return std::unexpected(Error{"etcd: a create found its keys present, then absent, at one revision"});
        pending = std::move(absent);
    }
    return created;
}

// ---- Writing -----------------------------------------------------------------------------

// One resource's write, planned from what was last read of it, and planned again when a
// transaction finds that etcd moved on.
struct Item {
    ResourceKey key;
    std::string etcd_key;
    const conf::Resource* input = nullptr;  // null: a removal
    std::string bytes;                      // the input resource encoded, to tell "unchanged"
    std::optional<etcd::KeyValue> current;  // as last read; nullopt: absent
    std::optional<MirrorEntry> current_entry;
    // The plan
    Outcome outcome = Outcome::unchanged;
    MirrorEntry next;
    std::vector<vip::Address> claims;  // VIPs this write claims
    std::string vip_error;
    bool done = false;
    std::int64_t order = 0;  // creations keep the input's order (see batch())
};

struct Writer::Impl {
    etcd::Client& client;
    const Layout& layout;
    const Pools& pools;
    const Limits& limits;
    Clock::time_point now = Clock::now();
    std::optional<vip::Pool> pool4, pool6;
    std::optional<std::set<vip::Address>> taken;  // the VIPs known to be held
    std::optional<TakenLedger> ledger;
    bool taken_read = false;   // `taken` has every VIP etcd held when it was read
    bool many_claims = false;  // this call creates enough MES to read every VIP first
    int lost_picks = 0;        // transactions lost because a picked VIP was held
    std::int64_t lease = 0;
    Clock::time_point lease_granted{};
    std::vector<std::string> notes;
    std::mt19937_64 random{std::random_device{}()};
    etcd::Options options;   // for the connections of parallel writers
    std::mutex plan_mutex;   // parallel writers plan again one at a time

    Impl(etcd::Client& c, const Layout& l, const Pools& p, const Limits& lim, etcd::Options o)
        : client(c), layout(l), pools(p), limits(lim), options(std::move(o))
    {
        if (!pools.ipv4.empty()) pool4 = vip::Pool::parse(pools.ipv4);
        if (!pools.ipv6.empty()) pool6 = vip::Pool::parse(pools.ipv6);
    }
    const std::optional<vip::Pool>& pool(vip::Family f) const { return f == vip::Family::v4 ? pool4 : pool6; }

    // Every key under `prefix` at one revision, a page at a time.
    Result<std::vector<etcd::KeyValue>> range_all(const std::string& prefix, bool keys_only)
    {
        std::vector<etcd::KeyValue> out;
        etcd::RangeRequest req;
        req.key = prefix;
        req.range_end = etcd::prefix_end(prefix);
        req.keys_only = keys_only;
        req.limit = keys_only ? 10000 : 1000;
        for (;;) {
            auto page = client.range(req);
            // A page too large for one response (large Secrets) is asked again at half the size.
            if (!page && !page.error().unavailable && req.limit > 1) {
                req.limit /= 2;
                continue;
            }
            if (!page) return std::unexpected(to_error(page.error()));
            if (req.revision == 0) req.revision = page->revision;
            for (auto& kv : page->kvs) out.push_back(std::move(kv));
            if (!page->more || out.empty()) break;
            req.key = out.back().key + '\0';
        }
        return out;
    }

    // Reads the current value of each item's key, as many to a transaction as etcd allows.
    Result<void> read_current(std::vector<Item>& items)
    {
        for (std::size_t start = 0; start < items.size(); start += limits.max_txn_ops) {
            std::size_t end = std::min(items.size(), start + limits.max_txn_ops);
            std::vector<etcd::Operation> ops;
            for (std::size_t i = start; i < end; ++i)
                ops.push_back(etcd::Operation{etcd::Operation::Type::range, items[i].etcd_key, {}, {}, 0});
            auto r = client.txn({}, ops, {});
            if (!r) return std::unexpected(to_error(r.error()));
            if (r->ranges.size() != end - start) return std::unexpected(Error{"etcd: a read answered out of step"});
            for (std::size_t i = start; i < end; ++i) {
                auto& kvs = r->ranges[i - start].kvs;
                if (auto set = set_current(items[i], kvs.empty() ? nullptr : &kvs.front()); !set) return set;
            }
        }
        return {};
    }

    Result<void> set_current(Item& item, const etcd::KeyValue* kv)
    {
        item.current.reset();
        item.current_entry.reset();
        if (!kv) return {};
        item.current = *kv;
        item.current_entry = decode_value(kv->value, item.key, kv->create_revision);
        if (!item.current_entry)
            return std::unexpected(Error{"etcd: the value of " + item.etcd_key + " is not one mesd wrote (format 1)"});
        return {};
    }

    // The allocator, with no address known taken yet: enough for a few new MES in a pool
    // that is mostly free, where a pick someone holds costs one lost transaction.
    void start_ledger()
    {
        if (ledger) return;
        taken.emplace();
        ledger.emplace(*taken);
        // Each call starts at a random place in the pool and goes up from there: writers on
        // several nodes then rarely reach for the same address, and one call's VIPs still
        // come out in a row.
        for (auto f : {vip::Family::v4, vip::Family::v6}) {
            const auto& p = pool(f);
            if (!p || !p->has_usable()) continue;
            vip::u128 count = p->usable_count();
            vip::u128 offset = (static_cast<vip::u128>(random()) << 64 | random()) % count;
            vip::Address start = p->first_usable();
            start.value += offset;
            ledger->set_cursor(start);
        }
    }

    // Every VIP claimed or quarantined in etcd, read once (keys only): for many new MES, and
    // once picks from the ledger alone have lost a few transactions.
    Result<void> read_taken()
    {
        if (taken_read) return {};
        start_ledger();
        for (const std::string& prefix : {layout.vips(), layout.quarantines()}) {
            auto keys = range_all(prefix, true);
            if (!keys) return std::unexpected(keys.error());
            for (const auto& kv : *keys)
                if (auto a = vip::Address::parse(std::string_view(kv.key).substr(prefix.size()))) taken->insert(*a);
        }
        taken_read = true;
        return {};
    }

    // A free address of family `f`, wrapping round to the pool's start once.
    std::expected<vip::Address, std::string> pick(vip::Family f)
    {
        const auto& p = *pool(f);
        auto a = vip::allocate(p, *ledger, now, pools.quarantine);
        if (!a) {
            ledger->set_cursor(p.first_usable());
            a = vip::allocate(p, *ledger, now, pools.quarantine);
        }
        if (a) taken->insert(*a);
        return a;
    }

    // Decides what writing `item` takes, from what was last read of it.
    Result<void> plan(Item& item)
    {
        item.claims.clear();
        item.vip_error.clear();
        const conf::Resource& res = *item.input;
        if (item.current_entry) {
            item.next = *item.current_entry;
            bool same = resource_bytes(item.current_entry->resource) == item.bytes;
            item.outcome = same ? Outcome::unchanged : Outcome::configured;
            if (!same) {
                item.next.resource = res;
                item.next.modified_at = now;
            }
        } else {
            item.outcome = Outcome::created;
            item.next = MirrorEntry{res, 0, now, now, std::nullopt, std::nullopt};
        }
        if (res.kind != conf::Kind::mesh_external_service) return {};
        // A MES without a VIP of a configured family (new, or its pool was full) gets one.
        for (auto f : {vip::Family::v4, vip::Family::v6}) {
            auto& a = address_of(item.next, f);
            if (a || !pool(f)) continue;
            if (many_claims) {
                if (auto r = read_taken(); !r) return r;
            } else {
                start_ledger();
            }
            auto picked = pick(f);
            if (!picked) {
                item.vip_error += (item.vip_error.empty() ? "" : "; ") + picked.error();
                continue;
            }
            a = *picked;
            item.claims.push_back(*picked);
            if (item.outcome == Outcome::unchanged) item.outcome = Outcome::configured;
        }
        return {};
    }

    // The compares and operations of one planned item.
    void add(const Item& item, std::vector<etcd::Compare>& compare, std::vector<etcd::Operation>& ops)
    {
        using C = etcd::Compare;
        if (item.input) {
            if (item.current) compare.push_back(C{item.etcd_key, C::Target::mod, C::Op::equal, item.current->mod_revision, {}});
            else compare.push_back(C{item.etcd_key, C::Target::create, C::Op::equal, 0, {}});
            ops.push_back(etcd::Operation{etcd::Operation::Type::put, item.etcd_key, encode_value(item.next), {}, 0});
            for (const auto& a : item.claims) {
                compare.push_back(C{layout.vip(a), C::Target::create, C::Op::equal, 0, {}});
                compare.push_back(C{layout.quarantine(a), C::Target::create, C::Op::equal, 0, {}});
                ops.push_back(etcd::Operation{etcd::Operation::Type::put, layout.vip(a),
                                              owner_text(item.key.mesh, item.key.name), {}, 0});
            }
            return;
        }
        // A removal: the resource as read, its VIP claims, and quarantine entries for them.
        compare.push_back(C{item.etcd_key, C::Target::mod, C::Op::equal, item.current->mod_revision, {}});
        ops.push_back(etcd::Operation{etcd::Operation::Type::remove, item.etcd_key, {}, {}, 0});
        for (auto f : {vip::Family::v4, vip::Family::v6}) {
            const auto& a = f == vip::Family::v4 ? item.current_entry->ipv4 : item.current_entry->ipv6;
            if (!a) continue;
            ops.push_back(etcd::Operation{etcd::Operation::Type::remove, layout.vip(*a), {}, {}, 0});
            if (lease != 0)
                ops.push_back(etcd::Operation{etcd::Operation::Type::put, layout.quarantine(*a),
                                              owner_text(item.key.mesh, item.key.name), {}, lease});
        }
    }

    // The JSON bytes of the compares and operations from c0 and o0 on (base64 and field names).
    static std::size_t cost(const std::vector<etcd::Compare>& c, const std::vector<etcd::Operation>& o,
                            std::size_t c0 = 0, std::size_t o0 = 0)
    {
        std::size_t bytes = 0;
        for (std::size_t i = c0; i < c.size(); ++i) bytes += c[i].key.size() * 4 / 3 + 80;
        for (std::size_t i = o0; i < o.size(); ++i) bytes += (o[i].key.size() + o[i].value.size()) * 4 / 3 + 80;
        return bytes;
    }

    // The lease quarantine entries are written under. A quarantine runs from the lease's
    // grant, so a call that goes on for long takes a new one after half the quarantine (and a
    // lease shorter than the call cannot run out under it).
    Result<void> ensure_lease()
    {
        if (pools.quarantine <= Clock::duration::zero()) return {};
        if (lease != 0 && Clock::now() - lease_granted < pools.quarantine / 2) return {};
        auto seconds = std::chrono::ceil<std::chrono::seconds>(pools.quarantine);
        auto granted = client.lease_grant(seconds);
        if (!granted) return std::unexpected(to_error(granted.error()));
        lease = *granted;
        lease_granted = Clock::now();
        return {};
    }

    // Writes `items` (planned) in transactions within etcd's limits. A transaction whose
    // compares fail reads every compared key in its failure branch; the items are planned
    // again from that and the transaction retried.
    Result<void> write(std::vector<Item*> pending, etcd::Client& via)
    {
        int attempts = 0;
        std::size_t start = 0;  // pending[..start) are written
        for (;;) {
            // Fill one transaction from the first items not written yet. Compares and
            // operations are appended in place and cut back when an item does not fit.
            std::vector<etcd::Compare> compare;
            std::vector<etcd::Operation> ops;
            std::vector<Item*> batch;
            std::size_t bytes = 64;
            std::map<std::string, std::string> last_created;  // mesh -> name of the last creation
            while (start < pending.size() && pending[start]->done) ++start;
            for (std::size_t k = start; k < pending.size(); ++k) {
                Item* item = pending[k];
                if (item->done) continue;
                if (item->input && item->outcome == Outcome::unchanged && item->claims.empty()) {
                    item->done = true;
                    continue;
                }
                // Creations in one transaction share a create revision, and equal ages go by
                // name: a creation whose name sorts before an earlier one of its mesh waits for
                // the next transaction, so the input's order stays the order of age.
                if (item->input && !item->current) {
                    auto it = last_created.find(item->key.mesh);
                    if (it != last_created.end() && item->key.name < it->second && !batch.empty()) break;
                }
                if (!item->input && batch.empty())
                    if (auto l = ensure_lease(); !l) return l;
                std::size_t c0 = compare.size(), o0 = ops.size();
                add(*item, compare, ops);
                std::size_t added = cost(compare, ops, c0, o0);
                if (compare.size() > limits.max_txn_ops || ops.size() > limits.max_txn_ops ||
                    bytes + added > limits.max_request_bytes) {
                    if (batch.empty())
                        return std::unexpected(Error{"etcd: writing " + name_of(item->key) +
                                                     " takes more than --max-txn-ops (" +
                                                     std::to_string(limits.max_txn_ops) + ") operations or " +
                                                     std::to_string(limits.max_request_bytes) + " bytes"});
                    compare.resize(c0);
                    ops.resize(o0);
                    break;
                }
                bytes += added;
                batch.push_back(item);
                if (item->input && !item->current) last_created[item->key.mesh] = item->key.name;
            }
            if (batch.empty()) break;

            // The failure branch reads each compared key once, in this order.
            std::vector<std::string> keys;
            std::vector<etcd::Operation> reads;
            for (const auto& c : compare)
                if (std::ranges::find(keys, c.key) == keys.end()) {
                    keys.push_back(c.key);
                    reads.push_back(etcd::Operation{etcd::Operation::Type::range, c.key, {}, {}, 0});
                }
            auto r = via.txn(compare, ops, reads);
            if (!r) return std::unexpected(to_error(r.error()));
            if (r->succeeded) {
                for (Item* item : batch) item->done = true;
                attempts = 0;
                continue;
            }
            std::lock_guard planning(plan_mutex);  // the VIPs taken and the allocator are shared
            if (++attempts >= max_attempts)
                return std::unexpected(Error{"etcd: gave up after " + std::to_string(max_attempts) +
                                             " transactions in a row lost to concurrent writers"});
            // Someone else wrote first: learn what they wrote, plan again.
            std::map<std::string, const etcd::KeyValue*> now_there;
            if (r->ranges.size() != keys.size()) return std::unexpected(Error{"etcd: a failed write answered out of step"});
            for (std::size_t k = 0; k < keys.size(); ++k)
                now_there[keys[k]] = r->ranges[k].kvs.empty() ? nullptr : &r->ranges[k].kvs.front();
            for (const auto& [key, kv] : now_there) {
                if (!kv) continue;
                std::string_view rest(key);
                for (const std::string& prefix : {layout.vips(), layout.quarantines()})
                    if (rest.starts_with(prefix))
                        if (auto a = vip::Address::parse(rest.substr(prefix.size())); a && taken) taken->insert(*a);
            }
            // Picks that lost their address to another writer: after a few such losses every
            // held VIP is read, so that picks stop guessing.
            bool any_lost = std::ranges::any_of(batch, [&](Item* item) {
                return std::ranges::any_of(item->claims, [&](const vip::Address& a) {
                    auto v = now_there.find(layout.vip(a));
                    auto q = now_there.find(layout.quarantine(a));
                    return (v != now_there.end() && v->second) || (q != now_there.end() && q->second);
                });
            });
            if (any_lost && ++lost_picks >= 3 && !taken_read)
                if (auto read = read_taken(); !read) return read;
            // Every item of the batch planned again from what is there now: a MES someone
            // else created becomes an update keeping their VIP, a new one picks afresh.
            for (Item* item : batch) {
                auto it = now_there.find(item->etcd_key);
                if (it == now_there.end()) continue;
                if (auto set = set_current(*item, it->second); !set) return set;
                if (!item->input) {
                    if (!item->current) item->done = true;  // already deleted by someone else
                    continue;
                }
                if (auto p = plan(*item); !p) return p;
            }
        }
        return {};
    }

    // Writes `pending` on `writers` connections at once when there is enough of it: etcd
    // commits concurrent transactions together (one raft round, one fsync for several), and
    // a transaction's round trip, not mesctl, is what a large apply waits for.
    Result<void> write_all(std::vector<Item*> pending)
    {
        std::size_t writers = pending.size() >= parallel_min ? parallel_writers : 1;
        if (writers == 1) return write(std::move(pending), client);
        // Planning again may need the VIPs taken; read them now, while `client` is free.
        if (auto r = read_taken(); !r) return r;
        std::vector<std::unique_ptr<etcd::Client>> extra;
        for (std::size_t i = 1; i < writers; ++i) {
            auto c = etcd::Client::connect(options);
            if (!c) return std::unexpected(to_error(c.error()));
            extra.push_back(std::move(*c));
        }
        std::vector<Result<void>> results(writers);
        std::vector<std::thread> threads;
        std::size_t per = (pending.size() + writers - 1) / writers;
        for (std::size_t w = 0; w < writers; ++w) {
            std::size_t from = std::min(pending.size(), w * per), to = std::min(pending.size(), from + per);
            std::vector<Item*> slice(pending.begin() + static_cast<std::ptrdiff_t>(from),
                                     pending.begin() + static_cast<std::ptrdiff_t>(to));
            etcd::Client& via = w == 0 ? client : *extra[w - 1];
            threads.emplace_back([this, &results, w, &via, slice = std::move(slice)]() mutable {
                results[w] = write(std::move(slice), via);
            });
        }
        for (auto& t : threads) t.join();
        for (auto& r : results)
            if (!r) return r;
        return {};
    }
};

Writer::Writer(etcd::Client& client, const conf::Config& config, Limits limits)
    : client_(client), layout_(config.cluster.etcd.prefix), pools_(Pools::from(config)), limits_(limits),
      options_(client_options(config))
{
}

Result<WriteReport> Writer::apply(std::span<const conf::Resource> resources, bool prune, std::span<const ResourceKey> spare)
{
    Impl impl(client_, layout_, pools_, limits_, options_);
    std::vector<Item> items;
    items.reserve(resources.size());
    // One item per name, in the order names first appear; a later resource of the same name
    // replaces the earlier one, as it would within one transaction.
    std::map<std::string, std::size_t> named;  // etcd key -> index in items
    for (const auto& r : resources) {
        auto key = layout_.resource(r.kind, r.mesh, r.name);
        auto [it, fresh] = named.emplace(key, items.size());
        if (fresh) {
            Item item;
            item.key = ResourceKey{r.kind, r.mesh, r.name};
            item.etcd_key = std::move(key);
            items.push_back(std::move(item));
        }
        items[it->second].input = &r;
    }
    for (auto& item : items) item.bytes = resource_bytes(*item.input);

    std::vector<Item> removals;
    // A large input is matched against one read of the whole prefix (pages of 1,000), a small
    // one key by key (128 reads to a transaction).
    if (prune || items.size() > 1000) {
        auto all = impl.range_all(layout_.resources(), false);
        if (!all) return std::unexpected(all.error());
        std::map<std::string, const etcd::KeyValue*> by_key;
        for (const auto& kv : *all) by_key[kv.key] = &kv;
        for (auto& item : items) {
            auto it = by_key.find(item.etcd_key);
            if (auto set = impl.set_current(item, it == by_key.end() ? nullptr : it->second); !set)
                return std::unexpected(set.error());
        }
        // MES first, then generators, then Secrets: a Secret is never gone while a MES
        // being removed still names it.
        for (auto kind : {conf::Kind::mesh_external_service, conf::Kind::hostname_generator, conf::Kind::secret}) {
            if (!prune) break;
            for (const auto& kv : *all) {
                if (named.contains(kv.key)) continue;
                auto key = layout_.parse_resource(kv.key);
                if (!key || key->kind != kind) continue;
                if (std::ranges::any_of(spare, [&](const ResourceKey& k) {
                        return k.kind == key->kind && k.mesh == key->mesh && k.name == key->name;
                    }))
                    continue;
                Item item;
                item.key = *key;
                item.etcd_key = kv.key;
                if (auto set = impl.set_current(item, &kv); !set) return std::unexpected(set.error());
                removals.push_back(std::move(item));
            }
        }
    } else if (auto read = impl.read_current(items); !read) {
        return std::unexpected(read.error());
    }

    impl.many_claims = std::ranges::count_if(items, [](const Item& i) {
                           return i.key.kind == conf::Kind::mesh_external_service && !i.current;
                       }) >= 64;
    for (auto& item : items)
        if (auto p = impl.plan(item); !p) return std::unexpected(p.error());
    std::vector<Item*> pending;
    for (auto& item : items) pending.push_back(&item);
    if (auto w = impl.write_all(pending); !w) return std::unexpected(w.error());
    if (!removals.empty()) {
        if (auto l = impl.ensure_lease(); !l) return std::unexpected(l.error());
        for (auto kind : {conf::Kind::mesh_external_service, conf::Kind::hostname_generator, conf::Kind::secret}) {
            std::vector<Item*> group;
            for (auto& item : removals)
                if (item.key.kind == kind) group.push_back(&item);
            // One connection: each removal transaction checks the quarantine lease first.
            if (auto w = impl.write(group, client_); !w) return std::unexpected(w.error());
        }
    }

    WriteReport report;
    for (const auto& item : items) {
        MesStatus status;
        status.ipv4 = item.next.ipv4;
        status.ipv6 = item.next.ipv6;
        status.vip_error = item.vip_error;
        if (!item.vip_error.empty())
            report.notes.push_back("MeshExternalService " + item.key.mesh + "/" + item.key.name + " has no VIP: " +
                                   item.vip_error);
        report.changes.push_back(Change{item.key.kind, item.key.mesh, item.key.name, item.outcome, status});
    }
    for (const auto& item : removals) {
        if (!item.current_entry) continue;
        MesStatus status;
        status.ipv4 = item.current_entry->ipv4;
        status.ipv6 = item.current_entry->ipv6;
        report.changes.push_back(Change{item.key.kind, item.key.mesh, item.key.name, Outcome::deleted, status});
    }
    return report;
}

Result<WriteReport> Writer::remove(conf::Kind kind, std::string_view mesh, std::string_view name, bool force)
{
    Impl impl(client_, layout_, pools_, limits_, options_);
    Item item;
    item.key = ResourceKey{kind, std::string(mesh), std::string(name)};
    item.etcd_key = layout_.resource(kind, mesh, name);
    std::vector<Item> one;
    one.push_back(std::move(item));
    if (auto read = impl.read_current(one); !read) return std::unexpected(read.error());
    Item& target = one.front();
    if (!target.current) return std::unexpected(Error{name_of(target.key) + " not found"});
    if (kind == conf::Kind::secret && !force) {
        auto services = impl.range_all(layout_.resources_of(mesh, conf::Kind::mesh_external_service), false);
        if (!services) return std::unexpected(services.error());
        std::string users;
        for (const auto& kv : *services) {
            auto key = layout_.parse_resource(kv.key);
            if (!key) continue;
            auto e = decode_value(kv.value, *key, kv.create_revision);
            if (!e || !e->resource.mes()) continue;
            auto refs = conf::referenced_secrets(*e->resource.mes());
            if (std::ranges::find(refs, name) != refs.end())
                users += (users.empty() ? "" : ", ") + std::string(mesh) + "/" + e->resource.name;
        }
        if (!users.empty())
            return std::unexpected(Error{"Secret " + std::string(mesh) + "/" + std::string(name) +
                                         " is used by MeshExternalService " + users + " (use --force to delete it anyway)"});
    }
    if (auto l = impl.ensure_lease(); !l) return std::unexpected(l.error());
    auto status_before = target.current_entry;
    if (auto w = impl.write({&target}, client_); !w) return std::unexpected(w.error());
    WriteReport report;
    MesStatus status;
    if (status_before) {
        status.ipv4 = status_before->ipv4;
        status.ipv6 = status_before->ipv6;
    }
    report.changes.push_back(Change{kind, std::string(mesh), std::string(name), Outcome::deleted, status});
    return report;
}

Result<bool> Writer::has_secret(std::string_view mesh, std::string_view name)
{
    etcd::RangeRequest req;
    req.key = layout_.resource(conf::Kind::secret, mesh, name);
    req.keys_only = true;
    auto r = client_.range(req);
    if (!r) return std::unexpected(to_error(r.error()));
    return !r->kvs.empty();
}

Result<WriteReport> Writer::import(const Snapshot& snapshot, std::vector<std::string>& conflicts)
{
    Impl impl(client_, layout_, pools_, limits_, options_);
    auto entries = snapshot.list(std::nullopt, std::nullopt);
    if (!entries) return std::unexpected(entries.error());
    // Oldest first: etcd's create revisions then keep the store's order of age.
    std::ranges::stable_sort(*entries, [](const Entry& a, const Entry& b) { return a.created < b.created; });
    std::vector<Item> items;
    items.reserve(entries->size());
    for (const auto& e : *entries) {
        Item item;
        item.key = ResourceKey{e.resource.kind, e.resource.mesh, e.resource.name};
        item.etcd_key = layout_.resource(e.resource.kind, e.resource.mesh, e.resource.name);
        item.input = &e.resource;
        item.bytes = resource_bytes(e.resource);
        item.next = MirrorEntry{e.resource, 0, e.created_at, e.modified_at, e.status.ipv4, e.status.ipv6};
        items.push_back(std::move(item));
    }
    if (auto read = impl.read_current(items); !read) return std::unexpected(read.error());

    WriteReport report;
    std::vector<Item*> pending;
    auto plan_import = [&](Item& item) {
        item.claims.clear();
        if (item.current_entry) {
            // Already there: fine when it is the same resource with the same VIPs.
            bool same = resource_bytes(item.current_entry->resource) == item.bytes &&
                        item.current_entry->ipv4 == item.next.ipv4 && item.current_entry->ipv6 == item.next.ipv6;
            if (!same)
                conflicts.push_back(name_of(item.key) + " is already in etcd, different (VIP " +
                                    (item.current_entry->ipv4 ? item.current_entry->ipv4->to_string() : std::string("none")) +
                                    "); left as it is there");
            item.outcome = Outcome::unchanged;
            item.done = true;
            return;
        }
        item.outcome = Outcome::created;
        for (const auto& a : {item.next.ipv4, item.next.ipv6})
            if (a) item.claims.push_back(*a);
    };
    for (auto& item : items) {
        plan_import(item);
        if (!item.done) pending.push_back(&item);
    }
    // The import's own write loop: a lost compare here is a conflict to report, not a VIP to
    // pick again, since keeping every VIP is the point.
    int attempts = 0;
    while (!pending.empty()) {
        std::vector<etcd::Compare> compare;
        std::vector<etcd::Operation> ops;
        std::vector<Item*> batch;
        std::size_t bytes = 64;
        std::map<std::string, std::string> last_created;
        for (Item* item : pending) {
            auto it = last_created.find(item->key.mesh);
            if (it != last_created.end() && item->key.name < it->second && !batch.empty()) break;
            using C = etcd::Compare;
            std::size_t c0 = compare.size(), o0 = ops.size();
            compare.push_back(C{item->etcd_key, C::Target::create, C::Op::equal, 0, {}});
            ops.push_back(etcd::Operation{etcd::Operation::Type::put, item->etcd_key, encode_value(item->next), {}, 0});
            for (const auto& a : item->claims) {
                // Neither claimed nor in quarantine in etcd: a VIP freed in the cluster a
                // moment ago is not handed to an imported MES (clients may still cache it).
                compare.push_back(C{layout_.vip(a), C::Target::create, C::Op::equal, 0, {}});
                compare.push_back(C{layout_.quarantine(a), C::Target::create, C::Op::equal, 0, {}});
                ops.push_back(etcd::Operation{etcd::Operation::Type::put, layout_.vip(a),
                                              owner_text(item->key.mesh, item->key.name), {}, 0});
            }
            std::size_t added = Impl::cost(compare, ops, c0, o0);
            if (!batch.empty() && (compare.size() > limits_.max_txn_ops || ops.size() > limits_.max_txn_ops ||
                                   bytes + added > limits_.max_request_bytes)) {
                compare.resize(c0);
                ops.resize(o0);
                break;
            }
            bytes += added;
            batch.push_back(item);
            last_created[item->key.mesh] = item->key.name;
        }
        std::vector<etcd::Operation> reads;
        for (const auto& c : compare) reads.push_back(etcd::Operation{etcd::Operation::Type::range, c.key, {}, {}, 0});
        auto r = client_.txn(compare, ops, reads);
        if (!r) return std::unexpected(to_error(r.error()));
        if (r->succeeded) {
            for (Item* item : batch) item->done = true;
        } else {
            if (r->ranges.size() != compare.size()) return std::unexpected(Error{"etcd: a failed write answered out of step"});
            for (std::size_t k = 0; k < compare.size(); ++k) {
                if (r->ranges[k].kvs.empty()) continue;
                const auto& kv = r->ranges[k].kvs.front();
                for (Item* item : batch) {
                    if (item->done) continue;
                    if (kv.key == item->etcd_key) {
                        if (auto set = impl.set_current(*item, &kv); !set) return std::unexpected(set.error());
                        plan_import(*item);
                    } else if (std::ranges::any_of(item->claims, [&](const auto& a) { return layout_.vip(a) == kv.key; })) {
                        conflicts.push_back(name_of(item->key) + ": its VIP " + kv.key.substr(layout_.vips().size()) +
                                            " is claimed by " + kv.value + " in etcd; not imported");
                        item->outcome = Outcome::unchanged;
                        item->done = true;
                    } else if (std::ranges::any_of(item->claims,
                                                   [&](const auto& a) { return layout_.quarantine(a) == kv.key; })) {
                        conflicts.push_back(name_of(item->key) + ": its VIP " +
                                            kv.key.substr(layout_.quarantines().size()) +
                                            " is in quarantine in etcd (released there); not imported");
                        item->outcome = Outcome::unchanged;
                        item->done = true;
                    }
                }
            }
        }
        std::erase_if(pending, [](Item* i) { return i->done; });
        if (!pending.empty() && !r->succeeded && ++attempts >= max_attempts)
            return std::unexpected(Error{"etcd: gave up after " + std::to_string(max_attempts) +
                                         " transactions in a row lost; first left: " + name_of(pending.front()->key)});
        if (r->succeeded) attempts = 0;
    }

    // Quarantined VIPs stay quarantined for the rest of their time, under leases rounded up
    // to the minute so that a big quarantine list takes few leases.
    auto quarantined = snapshot.quarantine();
    if (!quarantined) return std::unexpected(quarantined.error());
    std::map<std::int64_t, std::int64_t> leases;  // minutes -> lease
    for (const auto& q : *quarantined) {
        auto left = q.released + pools_.quarantine - impl.now;
        if (left <= Clock::duration::zero()) continue;
        auto minutes = std::chrono::ceil<std::chrono::minutes>(left).count();
        auto& lease = leases[minutes];
        if (lease == 0) {
            auto granted = client_.lease_grant(std::chrono::seconds(minutes * 60));
            if (!granted) return std::unexpected(to_error(granted.error()));
            lease = *granted;
        }
        using C = etcd::Compare;
        auto r = client_.txn({C{layout_.vip(q.address), C::Target::create, C::Op::equal, 0, {}},
                              C{layout_.quarantine(q.address), C::Target::create, C::Op::equal, 0, {}}},
                             {etcd::Operation{etcd::Operation::Type::put, layout_.quarantine(q.address), "imported", {}, lease}},
                             {});
        if (!r) return std::unexpected(to_error(r.error()));
    }

    for (const auto& item : items) {
        MesStatus status;
        status.ipv4 = item.next.ipv4;
        status.ipv6 = item.next.ipv6;
        report.changes.push_back(Change{item.key.kind, item.key.mesh, item.key.name, item.outcome, status});
    }
    return report;
}

Result<std::vector<NodeInfo>> Writer::nodes()
{
    etcd::RangeRequest req;
    req.key = layout_.nodes();
    req.range_end = etcd::prefix_end(req.key);
    auto r = client_.range(req);
    if (!r) return std::unexpected(to_error(r.error()));
    std::vector<NodeInfo> out;
    for (const auto& kv : r->kvs) {
        NodeInfo n;
        n.name = kv.key.substr(req.key.size());
        try {
            auto j = nlohmann::json::parse(kv.value);
            n.revision = j.value("revision", std::int64_t{0});
            n.updated_ms = j.value("updated", std::int64_t{0});
            n.started_ms = j.value("started", std::int64_t{0});
            n.connected = j.value("connected", false);
        } catch (const nlohmann::json::exception&) {
            continue;  // not a record of ours
        }
        // Behind by what the node had not applied when it wrote this record: the revision
        // before its own write, the node's and the others' heartbeats not counted.
        n.lag = std::max<std::int64_t>(0, kv.mod_revision - 1 - n.revision);
        out.push_back(std::move(n));
    }
    return out;
}

}  // namespace store::cluster
