#include "cmd/view.hpp"

#include <yaml-cpp/yaml.h>

#include <charconv>
#include <ctime>

namespace cmd {

namespace {

std::string rfc3339(store::Clock::time_point t)
{
    std::time_t s = store::Clock::to_time_t(t);
    struct tm tm {};
    gmtime_r(&s, &tm);
    char buf[32];
    std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
    return buf;
}

Value labels_value(const std::map<std::string, std::string>& labels)
{
    Value v = Value::object();
    for (const auto& [k, val] : labels) v.set(k, val);
    return v;
}

// A YAML node as a Value: plain scalars that read as booleans or integers keep that type,
// so that an extension's config is shown as it was written.
Value node_value(const YAML::Node& node)
{
    switch (node.Type()) {
    case YAML::NodeType::Map: {
        Value v = Value::object();
        for (auto it = node.begin(); it != node.end(); ++it) v.set(it->first.Scalar(), node_value(it->second));
        return v;
    }
    case YAML::NodeType::Sequence: {
        Value v = Value::array();
        for (const auto& item : node) v.push(node_value(item));
        return v;
    }
    case YAML::NodeType::Scalar: {
        const std::string& text = node.Scalar();
        if (node.Tag() == "?") {
            if (text == "true" || text == "false") return Value(text == "true");
            std::int64_t n = 0;
            auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), n);
            if (ec == std::errc() && end == text.data() + text.size() && !text.empty()) return Value(n);
        }
        return Value(text);
    }
    default: return Value();
    }
}

Value extension_value(const conf::Extension& ext)
{
    Value v = Value::object();
    v.set("type", ext.type);
    if (ext.config) {
        try {
            v.set("config", node_value(YAML::Load(*ext.config)));
        } catch (const std::exception&) {
            v.set("config", *ext.config);  // stored by this program, so not expected
        }
    }
    return v;
}

Value source_value(const conf::DataSource& s, bool is_key)
{
    Value v = Value::object();
    if (s.shape == conf::DataSource::Shape::kuma) {
        // Kuma's current shape, as it was written.
        if (s.type == conf::DataSource::Type::secret) {
            v.set("type", "Secret");
            Value& ref = v.set("secretRef", Value::object());
            ref.set("kind", "Secret");
            ref.set("name", s.value);
        } else {
            v.set("type", "InsecureInline");
            v.set("insecureInline", Value::object()).set("value", is_key ? std::string("<redacted>") : s.value);
        }
        return v;
    }
    switch (s.type) {
    case conf::DataSource::Type::inline_bytes:
        v.set("inline", is_key ? std::string("<redacted>") : conf::base64_encode(s.value));
        break;
    case conf::DataSource::Type::inline_string:
        v.set("inlineString", is_key ? std::string("<redacted>") : s.value);
        break;
    case conf::DataSource::Type::secret: v.set("secret", s.value); break;
    }
    return v;
}

Value mes_spec(const conf::MeshExternalService& m)
{
    Value spec = Value::object();
    Value& match = spec.set("match", Value::object());
    match.set("type", "HostnameGenerator");
    if (m.port) match.set("port", static_cast<int>(*m.port));
    match.set("protocol", std::string(conf::protocol_name(m.protocol)));
    Value& eps = spec.set("endpoints", Value::array());
    for (const auto& e : m.endpoints) {
        Value& ep = eps.push(Value::object());
        ep.set("address", e.address);
        if (e.port) ep.set("port", static_cast<int>(*e.port));
        if (e.priority) ep.set("priority", static_cast<int>(e.priority));
    }
    if (m.tls) {
        const auto& t = *m.tls;
        Value& tls = spec.set("tls", Value::object());
        tls.set("enabled", t.enabled);
        Value& version = tls.set("version", Value::object());
        version.set("min", std::string(conf::tls_version_name(t.min)));
        version.set("max", std::string(conf::tls_version_name(t.max)));
        tls.set("allowRenegotiation", t.allow_renegotiation);
        Value& ver = tls.set("verification", Value::object());
        ver.set("mode", std::string(conf::verification_mode_name(t.mode)));
        if (!t.server_name.empty()) ver.set("serverName", t.server_name);
        if (!t.subject_alt_names.empty()) {
            Value& sans = ver.set("subjectAltNames", Value::array());
            for (const auto& san : t.subject_alt_names) {
                Value& s = sans.push(Value::object());
                s.set("type", std::string(conf::san_match_name(san.type)));
                s.set("value", san.value);
            }
        }
        if (t.ca_cert) ver.set("caCert", source_value(*t.ca_cert, false));
        if (t.client_cert) ver.set("clientCert", source_value(*t.client_cert, false));
        if (t.client_key) ver.set("clientKey", source_value(*t.client_key, true));
    }
    if (m.extension) spec.set("extension", extension_value(*m.extension));
    return spec;
}

Value mes_status(const store::MesStatus& s, const std::optional<conf::Condition>& tls)
{
    Value status = Value::object();
    Value& vip = status.set("vip", Value::object());
    if (s.ipv4) vip.set("ip", s.ipv4->to_string());
    else if (s.ipv6) vip.set("ip", s.ipv6->to_string());
    if (s.ipv4 && s.ipv6) vip.set("ipv6", s.ipv6->to_string());
    if (!s.vip_error.empty()) vip.set("error", s.vip_error);
    Value& addresses = status.set("addresses", Value::array());
    for (const auto& a : s.hostnames.addresses) {
        Value& addr = addresses.push(Value::object());
        addr.set("hostname", a.hostname);
        addr.set("origin", a.origin);
        addr.set("hostnameGeneratorRef", Value::object()).set("coreName", a.generator);
    }
    Value& gens = status.set("hostnameGenerators", Value::array());
    for (const auto& g : s.hostnames.generators) {
        Value& gen = gens.push(Value::object());
        gen.set("hostnameGeneratorRef", Value::object()).set("coreName", g.generator);
        Value& conds = gen.set("conditions", Value::array());
        for (const auto& c : g.conditions) {
            Value& cond = conds.push(Value::object());
            cond.set("type", c.type);
            cond.set("status", c.status);
            cond.set("reason", c.reason);
            cond.set("message", c.message);
        }
    }
    if (tls) {
        Value& cond = status.set("conditions", Value::array()).push(Value::object());
        cond.set("type", tls->type);
        cond.set("status", tls->status);
        cond.set("reason", tls->reason);
        cond.set("message", tls->message);
    }
    return status;
}

}  // namespace

std::optional<conf::Condition> tls_condition(const store::Snapshot& snapshot, const store::Entry& entry)
{
    const auto* mes = entry.resource.mes();
    if (!mes) return std::nullopt;
    const std::string& mesh = entry.resource.mesh;
    return conf::tls_condition(*mes, [&](std::string_view name) -> std::optional<std::string> {
        auto found = snapshot.get(conf::Kind::secret, mesh, name);
        if (!found || !*found || !(*found)->resource.secret()) return std::nullopt;
        return (*found)->resource.secret()->data;
    });
}

std::string vip_text(const store::MesStatus& status)
{
    std::string out;
    if (status.ipv4) out = status.ipv4->to_string();
    if (status.ipv6) out += (out.empty() ? "" : ",") + status.ipv6->to_string();
    return out.empty() ? "<none>" : out;
}

std::string condition_summary(const store::MesStatus& status, const std::optional<conf::Condition>& tls)
{
    std::string out;
    for (const auto& g : status.hostnames.generators)
        for (const auto& c : g.conditions)
            if (c.status != "True") out += (out.empty() ? "" : ",") + c.reason + "(" + g.generator + ")";
    if (!status.vip_error.empty()) out += (out.empty() ? "" : ",") + std::string("NoVIP");
    if (out.empty() && status.hostnames.generators.empty()) out = "NoGenerator";
    if (tls && tls->status != "True") out += (out.empty() ? "" : ",") + tls->reason + "(tls)";
    if (out.empty()) out = "Generated";
    return out;
}

std::string endpoint_text(const conf::Endpoint& e)
{
    std::string out = e.address;
    if (e.port) {
        bool v6 = e.kind == conf::AddressKind::ipv6;
        out = (v6 ? "[" + e.address + "]" : e.address) + ":" + std::to_string(*e.port);
    }
    if (e.priority) out += "(p" + std::to_string(e.priority) + ")";
    return out;
}

std::string tls_summary(const conf::MeshExternalService& mes)
{
    if (!mes.tls || !mes.tls->enabled) return "disabled";
    const auto& t = *mes.tls;
    std::string out = "enabled, verification " + std::string(conf::verification_mode_name(t.mode));
    out += ", SNI " + (t.server_name.empty() ? std::string("from the endpoint") : t.server_name);
    out += ", versions " + std::string(conf::tls_version_name(t.min)) + ".." + std::string(conf::tls_version_name(t.max));
    auto source = [](const std::optional<conf::DataSource>& s) -> std::string {
        if (!s) return "";
        switch (s->type) {
        case conf::DataSource::Type::inline_bytes: return "inline";
        case conf::DataSource::Type::inline_string: return "inlineString";
        case conf::DataSource::Type::secret: return "secret " + s->value;
        }
        return "";
    };
    out += ", CA " + (t.ca_cert ? source(t.ca_cert) : std::string("system bundle"));
    if (t.client_cert) out += ", client certificate " + source(t.client_cert);
    if (!t.subject_alt_names.empty()) out += ", " + std::to_string(t.subject_alt_names.size()) + " SAN matcher(s)";
    if (t.allow_renegotiation) out += ", renegotiation allowed";
    return out;
}

Value resource_value(const store::Entry& entry, const std::optional<conf::Condition>& tls)
{
    const auto& r = entry.resource;
    Value v = Value::object();
    v.set("type", std::string(conf::kind_name(r.kind)));
    if (!r.mesh.empty()) v.set("mesh", r.mesh);  // a HostnameGenerator may have none, as in Kuma
    v.set("name", r.name);
    v.set("creationTime", rfc3339(entry.created_at));
    v.set("modificationTime", rfc3339(entry.modified_at));
    if (!r.labels.empty()) v.set("labels", labels_value(r.labels));
    if (const auto* m = r.mes()) {
        v.set("spec", mes_spec(*m));
        v.set("status", mes_status(entry.status, tls));
    } else if (const auto* g = r.generator()) {
        Value& spec = v.set("spec", Value::object());
        Value& selector = spec.set("selector", Value::object());
        if (g->selects_mesh_external_services)
            selector.set("meshExternalService", Value::object()).set("matchLabels", labels_value(g->match_labels));
        spec.set("template", g->template_text);
        if (g->extension) spec.set("extension", extension_value(*g->extension));
    } else if (const auto* s = r.secret()) {
        // The value itself is never shown.
        v.set("dataBytes", static_cast<std::int64_t>(s->data.size()));
    }
    return v;
}

std::vector<std::string> table_header(conf::Kind kind)
{
    switch (kind) {
    case conf::Kind::mesh_external_service:
        return {"MESH", "NAME", "VIP", "HOSTNAMES", "PORT", "PROTOCOL", "ENDPOINTS", "CONDITIONS"};
    case conf::Kind::hostname_generator: return {"MESH", "NAME", "SELECTOR", "TEMPLATE"};
    case conf::Kind::secret: return {"MESH", "NAME", "BYTES"};
    }
    return {};
}

std::vector<std::string> table_row(const store::Entry& entry, const std::optional<conf::Condition>& tls)
{
    const auto& r = entry.resource;
    if (const auto* m = r.mes()) {
        std::string hostnames, endpoints;
        for (const auto& a : entry.status.hostnames.addresses) hostnames += (hostnames.empty() ? "" : ",") + a.hostname;
        for (const auto& e : m->endpoints) endpoints += (endpoints.empty() ? "" : ",") + endpoint_text(e);
        return {r.mesh,
                r.name,
                vip_text(entry.status),
                hostnames.empty() ? "-" : hostnames,
                m->port ? std::to_string(*m->port) : "*",
                std::string(conf::protocol_name(m->protocol)),
                endpoints.empty() ? "-" : endpoints,
                condition_summary(entry.status, tls)};
    }
    if (const auto* g = r.generator()) {
        std::string selector;
        if (!g->selects_mesh_external_services) selector = "(other kind)";
        else if (g->match_labels.empty()) selector = "all MES";
        else
            for (const auto& [k, v] : g->match_labels) selector += (selector.empty() ? "" : ",") + k + "=" + v;
        // "*": of no mesh, it serves every mesh.
        return {r.mesh.empty() ? std::string("*") : r.mesh, r.name, selector, g->template_text};
    }
    return {r.mesh, r.name, std::to_string(r.secret()->data.size())};
}

}  // namespace cmd
