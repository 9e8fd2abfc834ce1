#include "dns/dns.hpp"

#include <malloc.h>

#include <algorithm>

namespace dns {

StoreSource::StoreSource(const store::Store& store, std::vector<std::string> meshes)
    : store_(store), meshes_(std::move(meshes))
{
}

store::Result<bool> StoreSource::refresh()
{
    auto fresh = store_.snapshot();
    if (!fresh && fresh.error().map_resized) {
        // Another process grew the map: this process takes the new size only with no read
        // open, this snapshot's included.
        snapshot_.reset();
        fresh = store_.snapshot();
    }
    if (!fresh) return std::unexpected(fresh.error());
    auto generation = fresh->generation();
    if (!generation) return std::unexpected(generation.error());
    bool moved = !index_ || *generation != generation_;
    if (moved) {
        auto pools = fresh->pools();
        if (!pools) return std::unexpected(pools.error());
        auto index = NameIndex::build(*fresh, meshes_);
        if (!index) return std::unexpected(index.error());
        pool4_ = vip::Pool::parse(pools->ipv4);
        pool6_ = vip::Pool::parse(pools->ipv6);
        index_.emplace(std::move(*index));
        txt_at_.assign(index_->owners(), 0);
        txt_bytes_ = {};
        // Everything the hot path reads is in the index now; the pages the build walked
        // would otherwise stay mapped, and count as this process's memory, until the next.
        store_.unmap_pages();
        // The build grew its arrays by doubling; give the freed blocks back to the system.
        malloc_trim(0);
    }
    snapshot_.emplace(std::move(*fresh));
    generation_ = *generation;
    return moved;
}

namespace {

Owner to_owner(const NameIndex& index, const NameIndex::Owner& o)
{
    return Owner{std::string(index.mesh(o)), std::string(index.name(o)), NameIndex::ipv4(o), index.ipv6(o)};
}

}  // namespace

std::optional<Owner> StoreSource::find_name(std::string_view name)
{
    if (!index_) return std::nullopt;
    const auto* o = index_->find(name);
    if (!o) return std::nullopt;
    return to_owner(*index_, *o);
}

std::optional<Addresses> StoreSource::find_addresses(std::string_view name)
{
    if (!index_) return std::nullopt;
    auto found = index_->addresses(name);
    if (!found) return std::nullopt;
    return Addresses{found->ipv4, found->ipv6};
}

void StoreSource::prefetch(std::span<const std::string_view> names)
{
    if (index_) index_->prefetch(names);
}

std::optional<Owner> StoreSource::find_vip(const vip::Address& address)
{
    if (!index_) return std::nullopt;
    const auto* o = index_->find(address);
    if (!o) return std::nullopt;
    return to_owner(*index_, *o);
}

std::vector<std::string> StoreSource::hostnames_of(const Owner& owner)
{
    // The names in the index that answer with this owner's addresses: a PTR answer never
    // names a hostname that resolves to another VIP (one that another served mesh won).
    std::vector<std::string> out;
    if (!index_) return out;
    const NameIndex::Owner* o = nullptr;
    if (owner.ipv4) o = index_->find(*owner.ipv4);
    if (!o && owner.ipv6) o = index_->find(*owner.ipv6);
    if (!o) return out;
    for (std::size_t i = 0; i < o->hostnames; ++i) out.emplace_back(index_->hostname(*o, i));
    return out;
}

std::vector<std::string> StoreSource::describe(const Owner& owner)
{
    if (!snapshot_) return {};
    auto entry = snapshot_->get(conf::Kind::mesh_external_service, owner.mesh, owner.name);
    if (!entry || !*entry) return {};
    return describe_mes(owner.mesh, owner.name, *(*entry)->resource.mes());
}

Source::Txt StoreSource::txt_rdata(std::string_view name)
{
    if (!index_) return {};
    const auto* o = index_->find(name);
    if (!o) return {Found::no, {}};
    auto& at = txt_at_[index_->position(*o)];
    if (at == too_large) return {};
    if (at == 0) {
        // Read from the snapshot the index was built from; without it (released for a write)
        // nothing is kept, and the general path answers.
        if (!snapshot_) return {};
        auto entry = snapshot_->get(conf::Kind::mesh_external_service, index_->mesh(*o), index_->name(*o));
        if (!entry || !*entry || !(*entry)->resource.mes()) return {};
        // RFC 1035 3.3.14: character-strings of at most 255 bytes; the RDATA's size is 16 bits.
        std::size_t start = txt_bytes_.size();
        txt_bytes_.resize(start + 2);
        for (const auto& fact : describe_mes(index_->mesh(*o), index_->name(*o), *(*entry)->resource.mes())) {
            std::string_view text = std::string_view(fact).substr(0, 255);
            txt_bytes_.push_back(static_cast<std::uint8_t>(text.size()));
            txt_bytes_.insert(txt_bytes_.end(), text.begin(), text.end());
        }
        std::size_t size = txt_bytes_.size() - start - 2;
        if (size > 0xffff || start >= too_large - 1) {
            txt_bytes_.resize(start);
            at = too_large;
            return {};
        }
        txt_bytes_[start] = static_cast<std::uint8_t>(size >> 8);
        txt_bytes_[start + 1] = static_cast<std::uint8_t>(size & 0xff);
        at = static_cast<std::uint32_t>(start + 1);
    }
    std::size_t start = at - 1;
    std::size_t size = (static_cast<std::size_t>(txt_bytes_[start]) << 8) | txt_bytes_[start + 1];
    return {Found::yes, std::span<const std::uint8_t>(txt_bytes_).subspan(start + 2, size)};
}

Source::Hostnames StoreSource::vip_hostnames(const vip::Address& address, std::span<std::string_view> out)
{
    if (!index_) return {};
    const auto* o = index_->find(address);
    if (!o) return {Found::no, 0};
    if (o->hostnames > out.size()) return {};
    for (std::size_t i = 0; i < o->hostnames; ++i) out[i] = index_->hostname(*o, i);
    return {Found::yes, o->hostnames};
}

bool StoreSource::in_pool(const vip::Address& address)
{
    return (pool4_ && pool4_->contains(address)) || (pool6_ && pool6_->contains(address));
}

std::vector<vip::Pool> StoreSource::pools()
{
    std::vector<vip::Pool> out;
    if (pool4_) out.push_back(*pool4_);
    if (pool6_) out.push_back(*pool6_);
    return out;
}

std::size_t StoreSource::reverse_apex_labels(const vip::Address& address)
{
    // The pool's prefix rounded down to an octet or a nibble, plus in-addr.arpa or ip6.arpa.
    if (pool4_ && pool4_->contains(address)) return pool4_->prefix() / 8 + 2;
    if (pool6_ && pool6_->contains(address)) return pool6_->prefix() / 4 + 2;
    return 0;
}

bool StoreSource::has_names_below(std::string_view name)
{
    return index_ && index_->has_names_below(name);
}

}  // namespace dns
