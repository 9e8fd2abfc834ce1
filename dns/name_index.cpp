#include "dns/name_index.hpp"

#include <sys/mman.h>

#include <algorithm>
#include <bit>
#include <cstring>
#include <limits>
#include <map>
#include <new>
#include <utility>

namespace dns {

namespace detail {

namespace {
constexpr std::size_t populate_from = std::size_t{64} << 10;
}

void* populated_allocate(std::size_t bytes)
{
    if (bytes < populate_from) return ::operator new(bytes);
    void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (p == MAP_FAILED) throw std::bad_alloc();
    return p;
}

void populated_free(void* p, std::size_t bytes)
{
    if (bytes < populate_from) ::operator delete(p);
    else ::munmap(p, bytes);
}

}  // namespace detail

namespace {

// Eight bytes at a time, each folded in with a multiply and a shift: names are short, and
// this keeps the probe free of any setup.
std::uint32_t hash_name(std::string_view s)
{
    constexpr std::uint64_t k = 0x9e3779b97f4a7c15ull;
    std::uint64_t h = s.size() * k;
    std::size_t i = 0;
    for (; i + 8 <= s.size(); i += 8) {
        std::uint64_t w;
        std::memcpy(&w, s.data() + i, 8);
        h = (h ^ w) * k;
        h ^= h >> 29;
    }
    if (i < s.size()) {
        std::uint64_t w = 0;
        std::memcpy(&w, s.data() + i, s.size() - i);
        h = (h ^ w) * k;
        h ^= h >> 29;
    }
    return static_cast<std::uint32_t>(h ^ (h >> 32));
}

}  // namespace

std::uint32_t NameIndex::add_string(std::string_view s)
{
    auto at = static_cast<std::uint32_t>(arena_.size());
    arena_.insert(arena_.end(), s.begin(), s.end());
    return at;
}

NameIndex::NameRecord NameIndex::record(std::uint32_t at) const
{
    NameRecord r;
    const char* p = arena_.data() + at;
    std::memcpy(&r.owner, p, 4);
    std::memcpy(&r.ipv4, p + 4, 4);
    std::memcpy(&r.ipv6, p + 8, 4);
    r.has_ipv4 = static_cast<std::uint8_t>(p[12]);
    r.size = static_cast<std::uint8_t>(p[13]);
    return r;
}

void NameIndex::set_record(std::uint32_t at, const NameRecord& r)
{
    char* p = arena_.data() + at;
    std::memcpy(p, &r.owner, 4);
    std::memcpy(p + 4, &r.ipv4, 4);
    std::memcpy(p + 8, &r.ipv6, 4);
    p[12] = static_cast<char>(r.has_ipv4);
    p[13] = static_cast<char>(r.size);
}

std::string_view NameIndex::record_text(std::uint32_t at) const
{
    return {arena_.data() + at + record_size, static_cast<std::uint8_t>(arena_[at + 13])};
}

NameIndex::Owner NameIndex::new_owner(std::string_view mesh, std::string_view name)
{
    Owner o;
    // Owners arrive grouped by mesh: its name is stored once per group.
    if (!owners_.empty() && this->mesh(owners_.back()) == mesh) o.mesh_at = owners_.back().mesh_at;
    else o.mesh_at = add_string(mesh);
    o.mesh_size = static_cast<std::uint16_t>(mesh.size());
    o.name_at = add_string(name);
    o.name_size = static_cast<std::uint16_t>(name.size());
    return o;
}

store::Result<NameIndex> NameIndex::build(const store::Snapshot& snapshot, const std::vector<std::string>& meshes)
{
    NameIndex index;
    auto rank_of = [&](std::string_view mesh) -> std::optional<std::uint16_t> {
        for (std::size_t i = 0; i < meshes.size(); ++i)
            if (meshes[i] == mesh) return static_cast<std::uint16_t>(i);
        return std::nullopt;
    };

    auto counts = snapshot.counts();
    if (!counts) return std::unexpected(counts.error());
    // Room for everything up front (the arena's guess is generous; it is trimmed at the end).
    index.owners_.reserve(counts->vips);
    index.arena_.reserve(counts->vips * 32 + counts->hostnames * (32 + record_size));

    // Owners with VIPs, in the store's (mesh, name) order.
    auto vips = snapshot.scan_owner_vips([&](std::string_view mesh, std::string_view name, const vip::Address& a) {
        if (!rank_of(mesh)) return;
        if (index.owners_.empty() || index.mesh(index.owners_.back()) != mesh || index.name(index.owners_.back()) != name)
            index.owners_.push_back(index.new_owner(mesh, name));
        Owner& o = index.owners_.back();
        if (a.family == vip::Family::v4) {
            o.has_ipv4 = true;
            o.ipv4 = static_cast<std::uint32_t>(a.value);
        } else {
            std::array<std::uint8_t, 16> bytes{};
            for (int i = 0; i < 16; ++i) bytes[static_cast<std::size_t>(i)] = static_cast<std::uint8_t>(a.value >> (8 * (15 - i)));
            index.ipv6_.push_back(bytes);
            o.ipv6 = static_cast<std::uint32_t>(index.ipv6_.size());
        }
    });
    if (!vips) return std::unexpected(vips.error());
    std::size_t sorted_owners = index.owners_.size();
    std::map<std::pair<std::string, std::string>, std::uint32_t, std::less<>> without_vip;

    // Hostnames usually sort like their owners ("{{ .Name }}.mesh"): the owner found last,
    // or the one after it, is tried before a binary search.
    std::size_t hint = 0;
    auto owner_index = [&](std::string_view mesh, std::string_view name) -> std::uint32_t {
        for (std::size_t i = hint; i < std::min(hint + 2, sorted_owners); ++i)
            if (index.name(index.owners_[i]) == name && index.mesh(index.owners_[i]) == mesh) {
                hint = i;
                return static_cast<std::uint32_t>(i);
            }
        auto begin = index.owners_.begin(), end = begin + static_cast<std::ptrdiff_t>(sorted_owners);
        auto it = std::lower_bound(begin, end, std::pair{mesh, name}, [&](const Owner& o, const auto& key) {
            return std::pair{index.mesh(o), index.name(o)} < key;
        });
        if (it != end && index.mesh(*it) == mesh && index.name(*it) == name) {
            hint = static_cast<std::size_t>(it - index.owners_.begin());
            return static_cast<std::uint32_t>(hint);
        }
        auto found = without_vip.find(std::pair{std::string(mesh), std::string(name)});
        if (found != without_vip.end()) return found->second;
        // Hostnames but no VIP (an exhausted pool): the name exists, with no addresses.
        index.owners_.push_back(index.new_owner(mesh, name));
        auto at = static_cast<std::uint32_t>(index.owners_.size() - 1);
        without_vip.emplace(std::pair{std::string(mesh), std::string(name)}, at);
        return at;
    };

    // Hostnames come sorted, so the meshes generating one name are adjacent. Each gets a
    // record in the arena; the mesh rank of its owner matters only while building.
    struct Built {
        std::uint32_t at = 0;
        std::uint16_t mesh_rank = 0;
    };
    std::vector<Built> built;
    built.reserve(counts->hostnames);
    auto record_of = [&](std::uint32_t owner, std::size_t size) {
        const Owner& o = index.owners_[owner];
        return NameRecord{owner, o.ipv4, o.ipv6, static_cast<std::uint8_t>(o.has_ipv4), static_cast<std::uint8_t>(size)};
    };
    auto names = snapshot.scan_hostnames([&](std::string_view hostname, std::string_view mesh, std::string_view name) {
        auto rank = rank_of(mesh);
        if (!rank || hostname.empty() || hostname.size() > 255) return;
        if (!built.empty() && index.record_text(built.back().at) == hostname) {
            Built& last = built.back();
            if (*rank < last.mesh_rank) {
                index.set_record(last.at, record_of(owner_index(mesh, name), hostname.size()));
                last.mesh_rank = *rank;
            }
            return;
        }
        auto owner = owner_index(mesh, name);  // may add strings: before the record starts
        auto at = static_cast<std::uint32_t>(index.arena_.size());
        index.arena_.resize(index.arena_.size() + record_size);
        index.set_record(at, record_of(owner, hostname.size()));
        index.add_string(hostname);
        built.push_back({at, *rank});
    });
    if (!names) return std::unexpected(names.error());

    // Offsets into the arena are 32 bits.
    if (index.arena_.size() > std::numeric_limits<std::uint32_t>::max() - 1)
        return std::unexpected(store::Error{"too many names for the in-memory index (its strings exceed 4 GiB)"});
    index.names_ = built.size();
    index.slots_.assign(std::bit_ceil(std::max<std::size_t>(16, built.size() * 2)), 0);
    for (const auto& b : built) {
        auto text = index.record_text(b.at);
        auto hash = hash_name(text);
        *index.slot_for(text, hash) = (std::uint64_t{hash} << 32) | (b.at + 1);
    }
    // Each owner's hostnames, grouped by owner and in hostname order within each group (the
    // order of `built`), for PTR answers. A record holds at most 65,535 of them (RFC 1035
    // 4.1.1's ANCOUNT); no generator set comes near.
    std::vector<std::uint32_t> placed(index.owners_.size(), 0);
    for (const auto& b : built) ++placed[index.record(b.at).owner];
    std::uint32_t next = 0;
    for (std::size_t i = 0; i < index.owners_.size(); ++i) {
        index.owners_[i].hostnames_at = next;
        index.owners_[i].hostnames = static_cast<std::uint16_t>(std::min<std::uint32_t>(placed[i], 65535));
        next += placed[i];
        placed[i] = 0;
    }
    index.hostname_records_.assign(next, 0);
    for (const auto& b : built) {
        auto owner = index.record(b.at).owner;
        index.hostname_records_[index.owners_[owner].hostnames_at + placed[owner]++] = b.at;
    }
    for (std::uint32_t i = 0; i < index.owners_.size(); ++i) {
        if (index.owners_[i].has_ipv4) index.by_ipv4_.push_back(i);
        if (index.owners_[i].ipv6) index.by_ipv6_.push_back(i);
    }
    // The ancestors are suffixes of the hostnames' texts: they point into the arena, so each
    // costs a slot, not a string. "a.b.mesh" gives "b.mesh" and "mesh". Most hostnames share
    // their ancestors, so the table grows as they come (load at most one half).
    std::size_t ancestors = 0;
    index.ancestors_.assign(16, Ancestor{});
    auto add_ancestor = [&](std::string_view suffix, std::uint32_t at) {
        auto hash = hash_name(suffix);
        Ancestor& a = index.ancestor_for(suffix, hash);
        if (a.slot != 0) return false;
        a = Ancestor{(std::uint64_t{hash} << 32) | (std::uint64_t{at} + 1), static_cast<std::uint32_t>(suffix.size())};
        if (++ancestors * 2 > index.ancestors_.size()) {
            auto old = std::move(index.ancestors_);
            index.ancestors_.assign(old.size() * 2, Ancestor{});
            for (const auto& o : old) {
                if (o.slot == 0) continue;
                std::string_view text(index.arena_.data() + static_cast<std::uint32_t>(o.slot - 1), o.size);
                index.ancestor_for(text, static_cast<std::uint32_t>(o.slot >> 32)) = o;
            }
        }
        return true;
    };
    for (const auto& b : built) {
        auto text = index.record_text(b.at);
        auto text_at = b.at + static_cast<std::uint32_t>(record_size);
        for (auto dot = text.find('.'); dot != std::string_view::npos; dot = text.find('.', dot + 1)) {
            auto suffix = text.substr(dot + 1);
            // A suffix already known came with all of its own: the rest are there too.
            if (suffix.empty() || !add_ancestor(suffix, text_at + static_cast<std::uint32_t>(dot + 1))) break;
        }
    }
    std::ranges::sort(index.by_ipv4_, {}, [&](std::uint32_t i) { return index.owners_[i].ipv4; });
    std::ranges::sort(index.by_ipv6_, {}, [&](std::uint32_t i) { return index.ipv6_[index.owners_[i].ipv6 - 1]; });
    index.arena_.shrink_to_fit();
    index.owners_.shrink_to_fit();
    index.ipv6_.shrink_to_fit();
    return index;
}

std::vector<std::string> describe_mes(std::string_view mesh, std::string_view name, const conf::MeshExternalService& mes)
{
    std::vector<std::string> facts;
    // The RDATA a string costs: its length byte and at most 255 bytes (RFC 1035 3.3.14).
    auto cost = [](const std::string& fact) { return 1 + std::min<std::size_t>(fact.size(), 255); };
    facts.push_back("mes=" + std::string(mesh) + "/" + std::string(name));
    facts.push_back("port=" + (mes.port ? std::to_string(*mes.port) : std::string("*")));
    facts.push_back("protocol=" + std::string(conf::protocol_name(mes.protocol)));
    std::vector<std::string> endpoints;
    for (const auto& ep : mes.endpoints) {
        std::string text = "endpoint=" + ep.address;
        if (ep.port) text += ":" + std::to_string(*ep.port);
        if (ep.priority) text += " priority=" + std::to_string(ep.priority);
        endpoints.push_back(std::move(text));
    }
    std::string tls;
    if (!mes.tls || !mes.tls->enabled) {
        tls = "tls=disabled";
    } else {
        const auto& t = *mes.tls;
        std::string text = "tls=enabled mode=" + std::string(conf::verification_mode_name(t.mode));
        if (!t.server_name.empty()) text += " sni=" + t.server_name;
        if (t.min != conf::TlsVersion::tls_auto) text += " min=" + std::string(conf::tls_version_name(t.min));
        if (t.max != conf::TlsVersion::tls_auto) text += " max=" + std::string(conf::tls_version_name(t.max));
        if (t.client_cert) text += " client-cert";
        tls = std::move(text);
    }
    // The whole RDATA must fit one message: as many endpoints as fit max_txt_rdata, then
    // the tls string, then one saying how many were left out.
    std::size_t used = cost(tls);
    for (const auto& f : facts) used += cost(f);
    std::size_t all = used;
    for (const auto& e : endpoints) all += cost(e);
    std::size_t kept = endpoints.size();
    if (all > max_txt_rdata) {
        used += 1 + std::string_view("truncated=4294967295 more").size();
        kept = 0;
        while (kept < endpoints.size() && used + cost(endpoints[kept]) <= max_txt_rdata) used += cost(endpoints[kept++]);
    }
    for (std::size_t i = 0; i < kept; ++i) facts.push_back(std::move(endpoints[i]));
    facts.push_back(std::move(tls));
    if (kept < endpoints.size()) facts.push_back("truncated=" + std::to_string(endpoints.size() - kept) + " more");
    return facts;
}

std::uint64_t* NameIndex::slot_for(std::string_view name, std::uint32_t hash)
{
    return const_cast<std::uint64_t*>(std::as_const(*this).slot_for(name, hash));
}

// The slot holding `name`, or the empty slot where it would go.
const std::uint64_t* NameIndex::slot_for(std::string_view name, std::uint32_t hash) const
{
    std::size_t mask = slots_.size() - 1;
    for (std::size_t i = hash & mask;; i = (i + 1) & mask) {
        std::uint64_t s = slots_[i];
        if (s == 0) return &slots_[i];
        if (static_cast<std::uint32_t>(s >> 32) == hash && record_text(static_cast<std::uint32_t>(s - 1)) == name)
            return &slots_[i];
    }
}

NameIndex::Ancestor& NameIndex::ancestor_for(std::string_view name, std::uint32_t hash)
{
    return const_cast<Ancestor&>(std::as_const(*this).ancestor_for(name, hash));
}

const NameIndex::Ancestor& NameIndex::ancestor_for(std::string_view name, std::uint32_t hash) const
{
    std::size_t mask = ancestors_.size() - 1;
    for (std::size_t i = hash & mask;; i = (i + 1) & mask) {
        const Ancestor& a = ancestors_[i];
        if (a.slot == 0) return a;
        if (static_cast<std::uint32_t>(a.slot >> 32) == hash && a.size == name.size() &&
            std::string_view(arena_.data() + static_cast<std::uint32_t>(a.slot - 1), a.size) == name)
            return a;
    }
}

bool NameIndex::has_names_below(std::string_view name) const
{
    if (ancestors_.empty()) return false;
    return ancestor_for(name, hash_name(name)).slot != 0;
}

const NameIndex::Owner* NameIndex::find(std::string_view name) const
{
    if (slots_.empty()) return nullptr;
    std::uint64_t s = *slot_for(name, hash_name(name));
    if (s == 0) return nullptr;
    return &owners_[record(static_cast<std::uint32_t>(s - 1)).owner];
}

void NameIndex::prefetch(std::span<const std::string_view> names) const
{
    if (slots_.empty()) return;
    constexpr std::size_t at_most = 64;
    std::array<std::uint32_t, at_most> hashes;
    std::size_t n = std::min(names.size(), at_most);
    std::size_t mask = slots_.size() - 1;
    for (std::size_t i = 0; i < n; ++i) {
        hashes[i] = hash_name(names[i]);
        __builtin_prefetch(&slots_[hashes[i] & mask]);
    }
    for (std::size_t i = 0; i < n; ++i) {
        std::uint64_t s = slots_[hashes[i] & mask];
        if (s == 0 || static_cast<std::uint32_t>(s >> 32) != hashes[i]) continue;
        std::size_t at = static_cast<std::uint32_t>(s - 1);
        __builtin_prefetch(arena_.data() + at);
        // The text's end may be on the next line (when it is this name's: only the hash matched).
        if (std::size_t end = at + record_size + names[i].size(); end <= arena_.size()) __builtin_prefetch(arena_.data() + end - 1);
    }
}

std::optional<NameIndex::Addresses> NameIndex::addresses(std::string_view name) const
{
    if (slots_.empty()) return std::nullopt;
    std::uint64_t s = *slot_for(name, hash_name(name));
    if (s == 0) return std::nullopt;
    auto r = record(static_cast<std::uint32_t>(s - 1));
    Addresses out;
    if (r.has_ipv4) out.ipv4 = vip::Address{vip::Family::v4, r.ipv4};
    if (r.ipv6) {
        vip::Address a{vip::Family::v6, 0};
        for (auto b : ipv6_[r.ipv6 - 1]) a.value = (a.value << 8) | b;
        out.ipv6 = a;
    }
    return out;
}

const NameIndex::Owner* NameIndex::find(const vip::Address& address) const
{
    if (address.family == vip::Family::v4) {
        auto want = static_cast<std::uint32_t>(address.value);
        auto it = std::ranges::lower_bound(by_ipv4_, want, {}, [&](std::uint32_t i) { return owners_[i].ipv4; });
        if (it != by_ipv4_.end() && owners_[*it].ipv4 == want) return &owners_[*it];
        return nullptr;
    }
    auto bytes = address.bytes();
    std::array<std::uint8_t, 16> want{};
    if (bytes.size() != 16) return nullptr;
    std::memcpy(want.data(), bytes.data(), 16);
    auto it = std::ranges::lower_bound(by_ipv6_, want, {}, [&](std::uint32_t i) { return ipv6_[owners_[i].ipv6 - 1]; });
    if (it != by_ipv6_.end() && ipv6_[owners_[*it].ipv6 - 1] == want) return &owners_[*it];
    return nullptr;
}

std::optional<vip::Address> NameIndex::ipv4(const Owner& o)
{
    if (!o.has_ipv4) return std::nullopt;
    return vip::Address{vip::Family::v4, o.ipv4};
}

std::optional<vip::Address> NameIndex::ipv6(const Owner& o) const
{
    if (!o.ipv6) return std::nullopt;
    vip::Address a{vip::Family::v6, 0};
    for (auto b : ipv6_[o.ipv6 - 1]) a.value = (a.value << 8) | b;
    return a;
}

std::size_t NameIndex::bytes() const
{
    return arena_.capacity() + owners_.capacity() * sizeof(Owner) + ipv6_.capacity() * 16 +
           slots_.capacity() * sizeof(std::uint64_t) + ancestors_.capacity() * sizeof(Ancestor) +
           (by_ipv4_.capacity() + by_ipv6_.capacity() + hostname_records_.capacity()) * sizeof(std::uint32_t);
}

}  // namespace dns
