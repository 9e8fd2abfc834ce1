// What must hold for any bytes read as a file of resources, through the whole reading of conf:
// size and encoding checks, YAML, both document shapes, each kind's validation, the checks
// across documents, then hostname generation over what is valid. Shared by the libFuzzer
// target (test/conf/fuzz_conf.cpp), which aborts on a failure, and the test that replays its
// corpus in every build (test/conf/fuzz_corpus_test.cpp), which reports it:
//   - every diagnostic formats, and belongs to a document or the file;
//   - a valid HostnameGenerator's template parses (validation parsed it);
//   - every hostname generated is a valid hostname, and no two MES of a mesh hold one name.
#pragma once

#include "conf/conf.hpp"

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

namespace test_support {

// Calls check(ok, what) for each property; returns the number of valid documents.
template <typename Check>
std::size_t check_conf_input(std::string_view text, Check&& check)
{
    auto result = conf::load_text(text, "fuzz.yaml");
    for (const auto& d : result.file_errors) check(!d.format().empty(), "a file diagnostic formats");

    std::vector<conf::Ordered> generators;
    std::map<std::string, std::vector<conf::Ordered>> services;  // by mesh
    std::uint64_t created = 0;
    std::size_t valid = 0;
    for (const auto& doc : result.documents) {
        for (const auto& d : doc.diagnostics) check(!d.format().empty(), "a document diagnostic formats");
        if (!doc.valid() || !doc.kind_known) continue;
        ++valid;
        const auto& res = doc.resource;
        if (const auto* g = res.generator()) {
            check(conf::Template::parse(g->template_text).has_value(), "a valid generator's template parses");
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
        check(statuses.size() == list.size(), "one status per MES");
        std::map<std::string, std::size_t> holder;
        for (std::size_t i = 0; i < statuses.size(); ++i) {
            for (const auto& a : statuses[i].addresses) {
                check(conf::dns1123_subdomain_violations(a.hostname).empty(), "a generated hostname is valid");
                auto [it, inserted] = holder.try_emplace(a.hostname, i);
                check(inserted || it->second == i, "no two MES of a mesh hold one name");
            }
        }
    }
    return valid;
}

}  // namespace test_support
