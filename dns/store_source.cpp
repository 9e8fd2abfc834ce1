#include "dns/dns.hpp"

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
    bool moved = !snapshot_ || *generation != generation_;
    if (moved) {
        auto pools = fresh->pools();
        if (!pools) return std::unexpected(pools.error());
        pool4_ = vip::Pool::parse(pools->ipv4);
        pool6_ = vip::Pool::parse(pools->ipv6);
    }
    snapshot_.emplace(std::move(*fresh));
    generation_ = *generation;
    return moved;
}

namespace {

Owner to_owner(store::Owner o) { return Owner{std::move(o.mesh), std::move(o.name), o.ipv4, o.ipv6}; }

}  // namespace

std::optional<Owner> StoreSource::find_name(std::string_view name)
{
    if (!snapshot_) return std::nullopt;
    for (const auto& mesh : meshes_) {
        auto owner = snapshot_->lookup_hostname_in(name, mesh);
        if (owner && *owner) return to_owner(std::move(**owner));
    }
    return std::nullopt;
}

std::optional<Owner> StoreSource::find_vip(const vip::Address& address)
{
    if (!snapshot_) return std::nullopt;
    auto owner = snapshot_->owner_of(address);
    if (!owner || !*owner) return std::nullopt;
    if (std::ranges::find(meshes_, (*owner)->mesh) == meshes_.end()) return std::nullopt;
    return to_owner(std::move(**owner));
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

}  // namespace dns
