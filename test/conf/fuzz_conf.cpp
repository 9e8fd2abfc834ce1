// libFuzzer target: any bytes as a file of resources, through the whole reading of conf:
// size and encoding checks, YAML, both document shapes, each kind's validation, the checks
// across documents, then hostname generation over what is valid. It must never crash, never
// read out of bounds, and hold these:
//   - every diagnostic formats, and belongs to a document or the file;
//   - a valid HostnameGenerator's template parses (validation parsed it);
//   - every hostname generated is a valid hostname, and no two MES of a mesh hold one name.
#include "conf/conf.hpp"

#include <cstdlib>
#include <map>
#include <set>
#include <string_view>

namespace {

void check(bool ok)
{
    if (!ok) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size)
{
    std::string_view text(reinterpret_cast<const char*>(data), size);
    auto result = conf::load_text(text, "fuzz.yaml");
    for (const auto& d : result.file_errors) check(!d.format().empty());

    std::vector<conf::Ordered> generators;
    std::map<std::string, std::vector<conf::Ordered>> services;  // by mesh
    std::uint64_t created = 0;
    for (const auto& doc : result.documents) {
        for (const auto& d : doc.diagnostics) check(!d.format().empty());
        if (!doc.valid() || !doc.kind_known) continue;
        const auto& res = doc.resource;
        if (const auto* g = res.generator()) {
            check(conf::Template::parse(g->template_text).has_value());
            generators.push_back(conf::Ordered{&res, ++created});
        } else if (res.mes()) {
            services[res.mesh].push_back(conf::Ordered{&res, ++created});
        }
    }
    for (const auto& [mesh, list] : services) {
        std::vector<conf::Ordered> serving;
        for (const auto& g : generators)
            if (g.resource->mesh.empty() || g.resource->mesh == mesh) serving.push_back(g);
        auto statuses = conf::generate_hostnames(serving, list, {}, "zone");
        check(statuses.size() == list.size());
        std::map<std::string, std::size_t> holder;
        for (std::size_t i = 0; i < statuses.size(); ++i) {
            for (const auto& a : statuses[i].addresses) {
                check(conf::dns1123_subdomain_violations(a.hostname).empty());
                auto [it, inserted] = holder.try_emplace(a.hostname, i);
                check(inserted || it->second == i);
            }
        }
    }
    return 0;
}
