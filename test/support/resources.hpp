// Resources built in code for tests that talk to the store directly.
#pragma once

#include "conf/conf.hpp"

#include <cstdint>
#include <map>
#include <string>

namespace test_support {

// A MES on `port` with one DNS-named endpoint (example.com:443).
inline conf::Resource make_mes(const std::string& name, std::uint16_t port = 80, std::map<std::string, std::string> labels = {},
                               const std::string& mesh = "default")
{
    conf::Resource r;
    r.kind = conf::Kind::mesh_external_service;
    r.mesh = mesh;
    r.name = name;
    r.labels = std::move(labels);
    conf::MeshExternalService m;
    m.port = port;
    m.endpoints.push_back(conf::Endpoint{"example.com", conf::AddressKind::hostname, 443, 0});
    r.spec = m;
    return r;
}

// A HostnameGenerator selecting every MES of `mesh`.
inline conf::Resource make_generator(const std::string& name, const std::string& tmpl, const std::string& mesh = "default")
{
    conf::Resource r;
    r.kind = conf::Kind::hostname_generator;
    r.mesh = mesh;
    r.name = name;
    conf::HostnameGenerator g;
    g.selects_mesh_external_services = true;
    g.template_text = tmpl;
    r.spec = g;
    return r;
}

// A MES on `port` with one endpoint (127.0.0.1:9), as YAML; `extra` is appended to it.
inline std::string mes_doc(const std::string& name, int port = 80, const std::string& extra = "")
{
    return "---\ntype: MeshExternalService\nname: " + name + "\nspec:\n  match: {port: " + std::to_string(port) +
           ", protocol: tcp}\n  endpoints: [{address: 127.0.0.1, port: 9}]\n" + extra;
}

// A HostnameGenerator naming every MES `<name>.mesh`, as YAML.
inline const std::string generator_doc =
    "---\ntype: HostnameGenerator\nname: example\nspec:\n  selector:\n    meshExternalService:\n"
    "      matchLabels: {}\n  template: \"{{ .Name }}.mesh\"\n";

}  // namespace test_support
