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
    std::vector<std::string> facts;
    if (!snapshot_) return facts;
    auto entry = snapshot_->get(conf::Kind::mesh_external_service, owner.mesh, owner.name);
    if (!entry || !*entry) return facts;
    const auto& mes = *(*entry)->resource.mes();
    facts.push_back("mes=" + owner.mesh + "/" + owner.name);
    facts.push_back("port=" + (mes.port ? std::to_string(*mes.port) : std::string("*")));
    facts.push_back("protocol=" + std::string(conf::protocol_name(mes.protocol)));
    for (const auto& ep : mes.endpoints) {
        std::string text = "endpoint=" + ep.address;
        if (ep.port) text += ":" + std::to_string(*ep.port);
        if (ep.priority) text += " priority=" + std::to_string(ep.priority);
        facts.push_back(std::move(text));
    }
    if (!mes.tls || !mes.tls->enabled) {
        facts.push_back("tls=disabled");
    } else {
        const auto& t = *mes.tls;
        std::string text = "tls=enabled mode=" + std::string(conf::verification_mode_name(t.mode));
        if (!t.server_name.empty()) text += " sni=" + t.server_name;
        if (t.min != conf::TlsVersion::tls_auto) text += " min=" + std::string(conf::tls_version_name(t.min));
        if (t.max != conf::TlsVersion::tls_auto) text += " max=" + std::string(conf::tls_version_name(t.max));
        if (t.client_cert) text += " client-cert";
        facts.push_back(std::move(text));
    }
    return facts;
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

bool StoreSource::has_names_below(std::string_view name)
{
    return index_ && index_->has_names_below(name);
}

}  // namespace dns
