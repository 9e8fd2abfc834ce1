#include "conf/conf.hpp"

#include <algorithm>
#include <map>
#include <numeric>

namespace conf {

Template::Values template_values(const Resource& mes)
{
    Template::Values v;
    v.name = mes.name;
    auto label = [&](const char* key) {
        auto it = mes.labels.find(key);
        return it == mes.labels.end() ? std::optional<std::string>() : it->second;
    };
    v.display_name = label("kuma.io/display-name").value_or(mes.name);
    v.namespace_ = label("k8s.kuma.io/namespace").value_or("");
    v.mesh = mes.mesh;
    v.zone = label("kuma.io/zone").value_or("");
    v.labels = mes.labels;
    return v;
}

namespace {

bool selects(const HostnameGenerator& g, const Resource& mes)
{
    if (!g.selects_mesh_external_services) return false;
    return std::ranges::all_of(g.match_labels, [&](const auto& kv) {
        auto it = mes.labels.find(kv.first);
        return it != mes.labels.end() && it->second == kv.second;
    });
}

std::vector<std::size_t> creation_order(std::span<const Ordered> items)
{
    std::vector<std::size_t> order(items.size());
    std::iota(order.begin(), order.end(), 0);
    std::ranges::sort(order, [&](std::size_t a, std::size_t b) {
        return std::tie(items[a].created, items[a].resource->name) < std::tie(items[b].created, items[b].resource->name);
    });
    return order;
}

}  // namespace

std::vector<HostnameStatus> generate_hostnames(std::span<const Ordered> generators, std::span<const Ordered> services,
                                               const ClaimedBy& claimed_by)
{
    // Per service: generator name -> (hostname, condition). A map keeps generator order.
    struct Entry {
        std::string hostname;
        Condition condition;
    };
    std::vector<std::map<std::string, Entry>> per_service(services.size());
    std::map<std::string, std::size_t> claimed;  // hostname -> service index

    // Who holds `hostname` when service `si` renders it: nullopt when free or held by `si`
    // itself (a MES may hold one name through two generators).
    auto claimant = [&](const std::string& hostname, std::size_t si,
                        const Resource& gen_res) -> std::optional<std::string> {
        if (auto it = claimed.find(hostname); it != claimed.end())
            return it->second == si ? std::nullopt : std::optional<std::string>(services[it->second].resource->name);
        if (claimed_by) return claimed_by(hostname, gen_res);
        return std::nullopt;
    };

    auto service_order = creation_order(services);
    for (std::size_t gi : creation_order(generators)) {
        const Resource& gen_res = *generators[gi].resource;
        const HostnameGenerator* gen = gen_res.generator();
        if (!gen) continue;
        auto tmpl = Template::parse(gen->template_text);
        for (std::size_t si : service_order) {
            const Resource& mes = *services[si].resource;
            if (!selects(*gen, mes)) continue;
            Entry entry;
            entry.condition.type = "Generated";
            std::expected<std::string, std::string> rendered =
                tmpl ? tmpl->render(template_values(mes)) : std::unexpected("couldn't parse template: " + tmpl.error());
            if (!rendered) {
                entry.condition.status = "False";
                entry.condition.reason = "TemplateError";
                entry.condition.message = "pre evaluation of template with parameters failed with error=\"" +
                                          rendered.error() + "\"";
            } else if (!is_rfc1123_subdomain(*rendered)) {
                entry.condition.status = "False";
                entry.condition.reason = "TemplateError";
                entry.condition.message = "template renders to " + excerpt(*rendered) +
                                          " which is not a valid DNS name: " + std::string(rfc1123_subdomain_message);
            } else if (auto holder = claimant(*rendered, si, gen_res)) {
                entry.condition.status = "False";
                entry.condition.reason = "Collision";
                entry.condition.message = "Hostname collision with MeshExternalService: " + *holder;
            } else {
                claimed.emplace(*rendered, si);
                entry.hostname = *rendered;
                entry.condition.status = "True";
                entry.condition.reason = "Generated";
            }
            per_service[si][gen_res.name] = std::move(entry);
        }
    }

    std::vector<HostnameStatus> out(services.size());
    for (std::size_t si = 0; si < services.size(); ++si) {
        for (auto& [generator, entry] : per_service[si]) {
            if (!entry.hostname.empty())
                out[si].addresses.push_back(GeneratedAddress{entry.hostname, "HostnameGenerator", generator});
            out[si].generators.push_back(GeneratorStatus{generator, {std::move(entry.condition)}});
        }
    }
    return out;
}

}  // namespace conf
