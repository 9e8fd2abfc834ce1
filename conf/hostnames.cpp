#include "conf/conf.hpp"

#include <algorithm>
#include <map>
#include <numeric>

namespace conf {

GenerationOrder order_key(const Ordered& item)
{
    auto origin = item.resource->labels.find("kuma.io/origin");
    bool zone = origin != item.resource->labels.end() && origin->second == "zone";
    return GenerationOrder{!zone, item.created, item.resource->name};
}

Template::Values template_values(const Resource& mes, std::string_view local_zone)
{
    // As Kuma's EvaluateTemplate: a label that is present counts even when empty, except
    // kuma.io/zone, which falls back to the zone this program serves.
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
    if (v.zone.empty()) v.zone = std::string(local_zone);
    v.labels = mes.labels;
    return v;
}

std::vector<Resource> default_hostname_generators()
{
    auto make = [](std::string name, std::string origin) {
        Resource r;
        r.kind = Kind::hostname_generator;
        r.mesh.clear();
        r.name = std::move(name);
        r.labels = {{"kuma.io/origin", origin}};
        HostnameGenerator g;
        g.selects_mesh_external_services = true;
        g.match_labels = {{"kuma.io/origin", origin}};
        g.template_text = "{{ .DisplayName }}.extsvc.mesh.local";
        r.spec = std::move(g);
        return r;
    };
    std::vector<Resource> out;
    out.push_back(make("local-mesh-external-service", "zone"));
    out.push_back(make("synced-mesh-external-service", "global"));
    return out;
}

std::string hostname_error(std::string_view hostname)
{
    auto violations = dns1123_subdomain_violations(hostname);
    if (violations.empty()) return {};
    std::string quoted = hostname.size() <= hostname_excerpt_bytes ? go_quote(hostname)
                                                                   : excerpt(hostname, hostname_excerpt_bytes);
    return "generated hostname " + quoted + " is not a valid DNS name: " + join_violations(violations);
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

// Generators in order_key's order; services by creation and name alone (Kuma's
// sortResources does not look at their origin).
std::vector<std::size_t> creation_order(std::span<const Ordered> items, bool generators)
{
    std::vector<std::size_t> order(items.size());
    std::iota(order.begin(), order.end(), 0);
    auto key = [&](std::size_t i) {
        auto k = order_key(items[i]);
        if (!generators) k.later_origin = false;
        return k;
    };
    std::ranges::sort(order, [&](std::size_t a, std::size_t b) { return key(a) < key(b); });
    return order;
}

}  // namespace

std::vector<HostnameStatus> generate_hostnames(std::span<const Ordered> generators, std::span<const Ordered> services,
                                               const ClaimedBy& claimed_by, std::string_view local_zone)
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

    auto service_order = creation_order(services, false);
    for (std::size_t gi : creation_order(generators, true)) {
        const Resource& gen_res = *generators[gi].resource;
        const HostnameGenerator* gen = gen_res.generator();
        if (!gen) continue;
        auto tmpl = Template::parse(gen->template_text);
        for (std::size_t si : service_order) {
            const Resource& mes = *services[si].resource;
            if (!selects(*gen, mes)) continue;
            Entry entry;
            entry.condition.type = "Generated";
            // Kuma's words: EvaluateTemplate's errors, each the reason of a TemplateError.
            std::expected<std::string, std::string> rendered =
                tmpl ? tmpl->render(template_values(mes, local_zone))
                     : std::unexpected("failed compiling gotemplate error=" + go_quote(tmpl.error()));
            if (!rendered && tmpl)
                rendered = std::unexpected("pre evaluation of template with parameters failed with error=" +
                                           go_quote(rendered.error()));
            std::string invalid = rendered ? hostname_error(*rendered) : std::string();
            if (!rendered || !invalid.empty()) {
                entry.condition.status = "False";
                entry.condition.reason = "TemplateError";
                entry.condition.message = rendered ? invalid : rendered.error();
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
