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
    std::vector<std::string> out;
    if (!snapshot_) return out;
    auto entry = snapshot_->get(conf::Kind::mesh_external_service, owner.mesh, owner.name);
    if (!entry || !*entry) return out;
    for (const auto& a : (*entry)->status.hostnames.addresses) out.push_back(a.hostname);
    return out;
}

std::vector<std::string> StoreSource::describe(const Owner& owner)
{
    if (!snapshot_) return {};
    auto entry = snapshot_->get(conf::Kind::mesh_external_service, owner.mesh, owner.name);
    if (!entry || !*entry) return {};
    return describe_mes(owner.mesh, owner.name, *(*entry)->resource.mes());
}

Source::Prebuilt StoreSource::txt_rdata(std::string_view name)
{
    if (!index_) return {};
    const auto* o = index_->find(name);
    if (!o) return {Prebuilt::Found::no, {}};
    if (!o->has_txt) return {};
    return {Prebuilt::Found::yes, index_->txt(*o)};
}

Source::Prebuilt StoreSource::ptr_targets(const vip::Address& address)
{
    if (!index_) return {};
    const auto* o = index_->find(address);
    if (!o) return {Prebuilt::Found::no, {}};
    if (!o->has_ptr) return {};
    return {Prebuilt::Found::yes, index_->ptr_targets(*o)};
}

bool StoreSource::in_pool(const vip::Address& address)
{
    return (pool4_ && pool4_->contains(address)) || (pool6_ && pool6_->contains(address));
}

}  // namespace dns
