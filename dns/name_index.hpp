// The generated hostnames and VIPs of the served meshes, copied out of a store snapshot into
// one compact table. The DNS hot path is a single hash probe with no allocation, and the
// store's pages need not stay mapped between changes.
//
// Layout: every string (hostname, mesh, MES name) lives once in one arena; owners are
// fixed-size records with their addresses; each hostname is a record in the arena (its
// owner, that owner's addresses, then its text), found through an open-addressing table
// (linear probing, load at most one half) of 32-bit hash and record offset, so that an A
// lookup touches two cache lines: the slot and the record. PTR lookups binary-search owner
// indexes sorted by address.
// Each owner also lists its hostname records (by hostname), so that a PTR answer is read from
// the index as an A answer is, with no store read.
#pragma once

#include "store/store.hpp"
#include "vip/vip.hpp"

#include <array>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace dns {

namespace detail {

// Large blocks come straight from mmap with MAP_POPULATE: the kernel fills every page in one
// call instead of one fault per page as the index is written, which is most of the cost of
// building it where page faults are expensive (virtual machines). Small blocks use new.
void* populated_allocate(std::size_t bytes);
void populated_free(void* p, std::size_t bytes);

template <class T>
struct PopulatedAllocator {
    using value_type = T;
    PopulatedAllocator() = default;
    template <class U>
    PopulatedAllocator(const PopulatedAllocator<U>&) noexcept {}
    T* allocate(std::size_t n) { return static_cast<T*>(populated_allocate(n * sizeof(T))); }
    void deallocate(T* p, std::size_t n) noexcept { populated_free(p, n * sizeof(T)); }
    template <class U>
    bool operator==(const PopulatedAllocator<U>&) const noexcept { return true; }
};

template <class T>
using PopulatedVector = std::vector<T, PopulatedAllocator<T>>;

}  // namespace detail

class NameIndex {
public:
    struct Owner {
        std::uint32_t mesh_at = 0, name_at = 0;
        std::uint16_t mesh_size = 0, name_size = 0;
        std::uint32_t ipv4 = 0;  // host order
        std::uint32_t ipv6 = 0;  // 1 + its position in the IPv6 addresses; 0 for none
        std::uint32_t hostnames_at = 0;  // its first entry in hostname_records_
        std::uint16_t hostnames = 0;     // how many of its hostnames this index answers
        bool has_ipv4 = false;
    };

    // The hostnames of `meshes` in `snapshot`; a name several meshes generate goes to the
    // first of them listed.
    static store::Result<NameIndex> build(const store::Snapshot& snapshot, const std::vector<std::string>& meshes);

    // `name` lowercase, without the final dot.
    const Owner* find(std::string_view name) const;
    // The addresses of `name`, read from its record alone (the DNS hot path).
    struct Addresses {
        std::optional<vip::Address> ipv4;
        std::optional<vip::Address> ipv6;
    };
    std::optional<Addresses> addresses(std::string_view name) const;
    // Starts loading the slots, then the records, that looking up `names` will read.
    void prefetch(std::span<const std::string_view> names) const;
    const Owner* find(const vip::Address& address) const;
    // Whether `name` (lowercase, without the final dot) is a proper ancestor of some hostname:
    // an empty non-terminal when it is no hostname itself (RFC 8020: it exists).
    bool has_names_below(std::string_view name) const;

    std::string_view mesh(const Owner& o) const { return {arena_.data() + o.mesh_at, o.mesh_size}; }
    std::string_view name(const Owner& o) const { return {arena_.data() + o.name_at, o.name_size}; }
    // The owner's `i`th hostname (lowercase, by hostname order): the names that answer with its
    // addresses, so a PTR answer never names a hostname that resolves elsewhere.
    std::string_view hostname(const Owner& o, std::size_t i) const { return record_text(hostname_records_[o.hostnames_at + i]); }
    // The owner's position, 0 to owners() - 1 (for tables kept beside the index).
    std::size_t position(const Owner& o) const { return static_cast<std::size_t>(&o - owners_.data()); }
    static std::optional<vip::Address> ipv4(const Owner& o);
    std::optional<vip::Address> ipv6(const Owner& o) const;

    std::size_t names() const { return names_; }
    std::size_t owners() const { return owners_.size(); }
    // Bytes held by the index's own arrays.
    std::size_t bytes() const;

private:
    // A hostname's record in the arena, followed by its text (unaligned: read with memcpy).
    struct NameRecord {
        std::uint32_t owner = 0;
        std::uint32_t ipv4 = 0;  // the owner's, as in Owner
        std::uint32_t ipv6 = 0;
        std::uint8_t has_ipv4 = 0;
        std::uint8_t size = 0;
    };
    static constexpr std::size_t record_size = 14;  // NameRecord's fields, packed

    std::uint32_t add_string(std::string_view s);

    Owner new_owner(std::string_view mesh, std::string_view name);
    NameRecord record(std::uint32_t at) const;
    void set_record(std::uint32_t at, const NameRecord& r);
    std::string_view record_text(std::uint32_t at) const;
    std::uint64_t* slot_for(std::string_view name, std::uint32_t hash);
    const std::uint64_t* slot_for(std::string_view name, std::uint32_t hash) const;
    struct Ancestor;
    Ancestor& ancestor_for(std::string_view name, std::uint32_t hash);
    const Ancestor& ancestor_for(std::string_view name, std::uint32_t hash) const;

    detail::PopulatedVector<char> arena_;
    detail::PopulatedVector<Owner> owners_;
    detail::PopulatedVector<std::array<std::uint8_t, 16>> ipv6_;  // network order
    std::size_t names_ = 0;
    detail::PopulatedVector<std::uint64_t> slots_;  // (hash << 32) | (record offset + 1); 0 is empty
    detail::PopulatedVector<std::uint32_t> by_ipv4_, by_ipv6_;  // owner indexes sorted by address
    // Every proper ancestor of every hostname, once: open addressing like `slots_`, each slot
    // (hash << 32) | (offset of the ancestor's text in the arena + 1), with its length beside.
    struct Ancestor {
        std::uint64_t slot = 0;
        std::uint32_t size = 0;
    };
    detail::PopulatedVector<Ancestor> ancestors_;
    detail::PopulatedVector<std::uint32_t> hostname_records_;   // record offsets, grouped by owner
};

// The most RDATA a MES's TXT record carries: with a 12-byte header, a question of the longest
// name (259 bytes), the record's own name uncompressed (255) and fixed part (10), and an OPT
// record with room for options, the answer stays under TCP's 65,535 bytes (RFC 1035 4.2.2).
inline constexpr std::size_t max_txt_rdata = 64'000;

// One string per fact about a MES, as its TXT record gives them: mes=, port=, protocol=,
// endpoint= (one each), tls=. When they would exceed max_txt_rdata, only the endpoints that
// fit are given, and a last string `truncated=N more` counts the others.
std::vector<std::string> describe_mes(std::string_view mesh, std::string_view name, const conf::MeshExternalService& mes);

}  // namespace dns
