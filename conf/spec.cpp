#include "conf/detail/spec.hpp"

#include "conf/detail/pem.hpp"

#include <array>
#include <limits>

namespace conf::detail {

namespace {

constexpr std::string_view port_message = "port must be a valid (1-65535)";

constexpr std::array<std::string_view, 4> protocols = {"tcp", "grpc", "http", "http2"};
constexpr std::array<std::string_view, 5> tls_versions = {"TLSAuto", "TLS10", "TLS11", "TLS12", "TLS13"};
constexpr std::array<std::string_view, 4> modes = {"SkipSAN", "SkipCA", "SkipAll", "Secured"};
constexpr std::array<std::string_view, 2> san_types = {"Prefix", "Exact"};

void decode_match(Reporter& r, const YAML::Node& node, const std::string& path, MeshExternalService& out)
{
    Fields match(r, node, path);
    if (!match.ok()) return;
    auto type = match.take("type");
    if (auto t = read_string(r, type, match.path("type")); t && *t != "HostnameGenerator")
        r.error(type, match.path("type"),
                "unrecognized type '" + *t + "' - only 'HostnameGenerator' is supported");
    if (auto port = read_int(r, match.take("port"), match.path("port"), 1, 65535, port_message))
        out.port = static_cast<std::uint16_t>(*port);
    if (auto p = read_choice(r, match.take("protocol"), match.path("protocol"), "protocol", protocols))
        out.protocol = static_cast<Protocol>(*p);
}

void decode_endpoint(Reporter& r, const YAML::Node& node, const std::string& path, Endpoint& out)
{
    Fields ep(r, node, path);
    if (!ep.ok()) {
        if (!present(node)) r.error(node, path, "must not be empty");
        return;
    }
    auto address_node = ep.take("address");
    auto address = read_string(r, address_node, ep.path("address"));
    std::size_t errors_before = r.document().diagnostics.size();
    if (address) {
        out.address = *address;
        constexpr std::string_view unix_scheme = "unix://";
        if (auto ip = ip_literal_kind(*address)) {
            out.kind = *ip;
        } else if (address->starts_with(unix_scheme)) {
            out.kind = AddressKind::unix_socket;
            std::string_view file = std::string_view(*address).substr(unix_scheme.size());
            // sun_path holds 108 bytes including the terminating NUL.
            if (file.size() < 2 || file.front() != '/' || file.find('\0') != std::string_view::npos) {
                r.error(address_node, ep.path("address"),
                        "address has to be a valid IP or hostname or a unix path (unix:///absolute/path)");
            } else if (file.size() > 107) {
                r.error(address_node, ep.path("address"), "unix socket path is longer than 107 bytes");
            }
        } else if (is_dns_name(*address)) {
            out.kind = AddressKind::hostname;
        } else {
            r.error(address_node, ep.path("address"), "address has to be a valid IP or hostname");
        }
    } else if (!present(address_node)) {
        r.error(node, ep.path("address"), "address has to be a valid IP or hostname");
    }
    // Kuma checks the port only of an address that is an IP or a host name.
    bool address_ok = address && r.document().diagnostics.size() == errors_before;
    auto port_node = ep.take("port");
    auto port = read_int(r, port_node, ep.path("port"), std::numeric_limits<std::int64_t>::min(),
                         std::numeric_limits<std::int64_t>::max(), port_message);
    if (port && (*port < 1 || *port > 65535)) {
        if (address_ok) r.error(port_node, ep.path("port"), std::string(port_message));
    } else if (port) {
        out.port = static_cast<std::uint16_t>(*port);
        if (out.kind == AddressKind::unix_socket && address)
            r.error(port_node, ep.path("port"), "must not be defined when endpoint is a unix path");
    }
    if (auto prio = read_int(r, ep.take("priority"), ep.path("priority"), 0, 128,
                             "priority must be in the range 0-128"))
        out.priority = static_cast<std::uint8_t>(*prio);
}

// Kuma's SecureDataSource: `{type: Secret, secretRef: {kind: Secret, name}}` or
// `{type: InsecureInline, insecureInline: {value}}`, checked with Kuma's rules and words
// (api/common/v1alpha1/datasource and the MES validator, which refuses File and EnvVar: they
// would read the control plane's own files and environment).
std::optional<DataSource> decode_kuma_data_source(Reporter& r, Fields& src,
                                                  SecretRef::Role role, bool tls_enabled,
                                                  std::vector<SecretRef>& refs,
                                                  std::chrono::system_clock::time_point now)
{
    auto type_node = src.take("type");
    auto secret_ref = src.take("secretRef");
    auto insecure_inline = src.take("insecureInline");
    // Known to Kuma's type, read only for types refused below.
    (void)src.take("file");
    (void)src.take("envVar");
    std::string type;
    if (present(type_node)) {
        auto t = read_string(r, type_node, src.path("type"));
        if (!t) return std::nullopt;
        type = std::move(*t);
    }
    const YAML::Node& at_type = present(type_node) ? type_node : src.node();
    if (type == "File" || type == "EnvVar") {
        r.error(at_type, src.path("type"), type + " must be one of: Secret, InsecureInline");
        return std::nullopt;
    }
    DataSource out;
    out.shape = DataSource::Shape::kuma;
    if (type == "Secret") {
        if (!present(secret_ref)) {
            r.error(src.node(), src.path("secretRef"), "must be defined");
            return std::nullopt;
        }
        Fields ref(r, secret_ref, src.path("secretRef"));
        if (!ref.ok()) return std::nullopt;
        auto kind_node = ref.take("kind");
        auto name_node = ref.take("name");
        std::string kind;
        if (present(kind_node)) {
            auto k = read_string(r, kind_node, ref.path("kind"));
            if (!k) return std::nullopt;
            kind = std::move(*k);
        }
        bool ok = true;
        if (kind != "Secret") {
            r.error(present(kind_node) ? kind_node : secret_ref, ref.path("kind"), kind + " must be one of: Secret");
            ok = false;
        }
        std::optional<std::string> name;
        if (present(name_node) && !(name = read_string(r, name_node, ref.path("name")))) return std::nullopt;
        if (!name || name->empty()) {
            r.error(present(name_node) ? name_node : secret_ref, ref.path("name"), "must be defined");
            return std::nullopt;
        }
        if (!ok) return std::nullopt;
        out.type = DataSource::Type::secret;
        out.value = *name;
        refs.push_back(SecretRef{*name, ref.path("name"), r.mark(name_node), role, tls_enabled});
        return out;
    }
    if (type == "InsecureInline") {
        if (!present(insecure_inline)) {
            r.error(src.node(), src.path("insecureInline"), "must be defined");
            return std::nullopt;
        }
        Fields inl(r, insecure_inline, src.path("insecureInline"));
        if (!inl.ok()) return std::nullopt;
        auto value_node = inl.take("value");
        std::optional<std::string> value;
        if (present(value_node) && !(value = read_string(r, value_node, inl.path("value")))) return std::nullopt;
        if (!value || value->empty()) {
            r.error(present(value_node) ? value_node : insecure_inline, inl.path("value"), "must be defined");
            return std::nullopt;
        }
        out.type = DataSource::Type::inline_string;
        out.value = std::move(*value);
        check_pem_role(r, r.mark(value_node), inl.path("value"), out.value, role, tls_enabled, now);
        return out;
    }
    // Kuma's message, word for word: an absent type reads as "" and leaves the line
    // starting with a space.
    r.error(at_type, src.path("type"), type + " must be one of: EnvVar, InsecureInline, File, Secret");
    return std::nullopt;
}

// A data source in either shape: the seed's (one of `inline`, `inlineString`, `secret`) or
// Kuma's current one (anything else, `{}` included, is read as Kuma's, with its messages).
std::optional<DataSource> decode_data_source(Reporter& r, const YAML::Node& node, const std::string& path,
                                             SecretRef::Role role, bool tls_enabled, std::vector<SecretRef>& refs,
                                             std::chrono::system_clock::time_point now)
{
    Fields src(r, node, path);
    if (!src.ok()) return std::nullopt;
    bool seed = !src.has("type") && (src.has("inline") || src.has("inlineString") || src.has("secret"));
    if (!seed) return decode_kuma_data_source(r, src, role, tls_enabled, refs, now);
    auto inline_node = src.take("inline");
    auto string_node = src.take("inlineString");
    auto secret_node = src.take("secret");
    int given = present(inline_node) + present(string_node) + present(secret_node);
    if (given != 1) {
        r.error(node, path, given == 0 ? "must define one of inline, inlineString, secret"
                                       : "must define only one of inline, inlineString, secret");
        return std::nullopt;
    }
    DataSource out;
    if (present(inline_node)) {
        auto text = read_string(r, inline_node, src.path("inline"));
        if (!text) return std::nullopt;
        auto bytes = base64_decode(*text);
        if (!bytes) {
            r.error(inline_node, src.path("inline"), "must be valid base64");
            return std::nullopt;
        }
        out.type = DataSource::Type::inline_bytes;
        out.value = std::move(*bytes);
        check_pem_role(r, r.mark(inline_node), src.path("inline"), out.value, role, tls_enabled, now);
    } else if (present(string_node)) {
        auto text = read_string(r, string_node, src.path("inlineString"));
        if (!text) return std::nullopt;
        out.type = DataSource::Type::inline_string;
        out.value = std::move(*text);
        check_pem_role(r, r.mark(string_node), src.path("inlineString"), out.value, role, tls_enabled, now);
    } else {
        auto name = read_string(r, secret_node, src.path("secret"));
        if (!name) return std::nullopt;
        if (!is_rfc1123_subdomain(*name)) {
            r.error(secret_node, src.path("secret"), std::string(rfc1123_subdomain_message));
            return std::nullopt;
        }
        out.type = DataSource::Type::secret;
        out.value = *name;
        refs.push_back(SecretRef{*name, src.path("secret"), r.mark(secret_node), role, tls_enabled});
    }
    return out;
}

void decode_tls(Reporter& r, const YAML::Node& node, const std::string& path, Tls& tls,
                std::vector<SecretRef>& refs, std::chrono::system_clock::time_point now)
{
    Fields f(r, node, path);
    if (!f.ok()) return;
    if (auto enabled = read_bool(r, f.take("enabled"), f.path("enabled"))) tls.enabled = *enabled;
    if (auto allow = read_bool(r, f.take("allowRenegotiation"), f.path("allowRenegotiation")))
        tls.allow_renegotiation = *allow;

    Fields version(r, f.take("version"), f.path("version"));
    if (version.ok()) {
        auto min_node = version.take("min");
        auto min = read_choice(r, min_node, version.path("min"), "min", tls_versions);
        auto max = read_choice(r, version.take("max"), version.path("max"), "max", tls_versions);
        if (min) tls.min = static_cast<TlsVersion>(*min);
        if (max) tls.max = static_cast<TlsVersion>(*max);
        if (min && max && tls.min != TlsVersion::tls_auto && tls.max != TlsVersion::tls_auto &&
            tls.min > tls.max)
            r.error(min_node, version.path("min"), "min version must be lower than max");
    }

    Fields v(r, f.take("verification"), f.path("verification"));
    if (!v.ok()) return;
    if (auto mode = read_choice(r, v.take("mode"), v.path("mode"), "mode", modes)) {
        constexpr VerificationMode by_index[] = {VerificationMode::skip_san, VerificationMode::skip_ca,
                                                 VerificationMode::skip_all, VerificationMode::secured};
        tls.mode = by_index[*mode];
    }
    auto server_name_node = v.take("serverName");
    if (auto sn = read_string(r, server_name_node, v.path("serverName"))) {
        if (!is_dns_name(*sn) || ip_literal_kind(*sn))
            r.error(server_name_node, v.path("serverName"), "must be a valid DNS name");
        else
            tls.server_name = *sn;
    }
    auto sans = v.take("subjectAltNames");
    if (present(sans)) {
        if (!sans.IsSequence()) {
            r.error(sans, v.path("subjectAltNames"), "must be a list");
        } else {
            for (std::size_t i = 0; i < sans.size(); ++i) {
                std::string san_path = join(v.path("subjectAltNames"), i);
                Fields san(r, sans[i], san_path);
                if (!san.ok()) continue;
                SubjectAltName out;
                auto type_node = san.take("type");
                if (present(type_node)) {
                    auto t = read_choice(r, type_node, san.path("type"), "type", san_types);
                    if (t) out.type = *t == 0 ? SanMatch::prefix : SanMatch::exact;
                }
                auto value_node = san.take("value");
                if (auto value = read_string(r, value_node, san.path("value")); value && !value->empty())
                    out.value = *value;
                else if (!value)
                    r.error(present(value_node) ? value_node : sans[i], san.path("value"), "must be defined");
                else
                    r.error(value_node, san.path("value"), "must not be empty");
                tls.subject_alt_names.push_back(std::move(out));
            }
        }
    }
    using Role = SecretRef::Role;
    bool has_cert = v.has("clientCert");
    bool has_key = v.has("clientKey");
    bool enabled = tls.enabled;
    tls.ca_cert = decode_data_source(r, v.take("caCert"), v.path("caCert"), Role::ca_cert, enabled, refs, now);
    tls.client_cert =
        decode_data_source(r, v.take("clientCert"), v.path("clientCert"), Role::client_cert, enabled, refs, now);
    tls.client_key =
        decode_data_source(r, v.take("clientKey"), v.path("clientKey"), Role::client_key, enabled, refs, now);
    if (has_cert && !has_key)
        r.error(v.node(), v.path("clientKey"), "must be defined when clientCert is defined");
    if (has_key && !has_cert)
        r.error(v.node(), v.path("clientCert"), "must be defined when clientKey is defined");
    using Type = DataSource::Type;
    if (tls.client_cert && tls.client_key && tls.client_cert->type != Type::secret &&
        tls.client_key->type != Type::secret && !check_certificates(tls.client_cert->value, now).error &&
        !check_private_key(tls.client_key->value).error) {
        // Not Kuma's to check either: a warning, and the MES's TLS condition says it.
        if (auto mismatch = check_key_pair(tls.client_cert->value, tls.client_key->value))
            r.warning(r.mark(v.node()), v.path("clientKey"), *mismatch + std::string(refused_until(enabled)));
    }
}

// Kuma's Extension {type, config}: `type` must not be empty (the message Kuma's MES and
// HostnameGenerator validators give), `config` is free-form and kept as flow YAML.
std::optional<Extension> decode_extension(Reporter& r, const YAML::Node& node, const std::string& path)
{
    if (!present(node)) return std::nullopt;
    Fields ext(r, node, path);
    if (!ext.ok()) return std::nullopt;
    Extension out;
    auto type_node = ext.take("type");
    if (present(type_node)) {
        auto type = read_string(r, type_node, ext.path("type"));
        if (!type) return std::nullopt;
        out.type = std::move(*type);
    }
    if (out.type.empty()) r.error(present(type_node) ? type_node : node, ext.path("type"), "must not be empty");
    if (auto config = ext.take("config"); present(config)) {
        YAML::Emitter e;
        e.SetMapFormat(YAML::Flow);
        e.SetSeqFormat(YAML::Flow);
        e << config;
        out.config = e.c_str();
    }
    return out;
}

}  // namespace

std::string_view refused_until(bool tls_enabled)
{
    return tls_enabled ? "; TLS connections to this service are refused until this is fixed" : "";
}

void check_pem_role(Reporter& r, const Mark& at, const std::string& path, std::string_view bytes,
                    SecretRef::Role role, bool tls_enabled, std::chrono::system_clock::time_point now)
{
    PemCheck check = role == SecretRef::Role::client_key ? check_private_key(bytes)
                                                         : check_certificates(bytes, now);
    // Kuma does not read the PEM when validating: bytes that do not parse are accepted, and
    // the MES's TLS condition says why it cannot be used.
    if (check.error) r.warning(at, path, *check.error + std::string(refused_until(tls_enabled)));
    for (auto& w : check.warnings) r.warning(at, path, std::move(w));
}

void decode_mes(Reporter& r, const YAML::Node& spec, MeshExternalService& out,
                std::vector<SecretRef>& secret_refs, std::chrono::system_clock::time_point now)
{
    Fields f(r, spec, "spec");
    if (!f.ok()) return;
    decode_match(r, f.take("match"), f.path("match"), out);

    auto endpoints = f.take("endpoints");
    if (present(endpoints)) {
        if (!endpoints.IsSequence()) {
            r.error(endpoints, f.path("endpoints"), "must be a list");
        } else {
            for (std::size_t i = 0; i < endpoints.size(); ++i) {
                Endpoint ep;
                decode_endpoint(r, endpoints[i], join(f.path("endpoints"), i), ep);
                out.endpoints.push_back(std::move(ep));
            }
        }
    }

    // In Kuma an extension hands the MES to a control plane plugin. mesd carries the traffic
    // itself, to spec.endpoints with spec.tls as given: the extension is checked as Kuma
    // checks it and kept so that it round-trips through the store and `mesctl get`.
    out.extension = decode_extension(r, f.take("extension"), f.path("extension"));

    auto tls = f.take("tls");
    if (present(tls)) {
        Tls t;
        decode_tls(r, tls, f.path("tls"), t, secret_refs, now);
        out.tls = std::move(t);
    }
}

void decode_hostname_generator(Reporter& r, const YAML::Node& spec, HostnameGenerator& out)
{
    Fields f(r, spec, "spec");
    if (!f.ok()) return;

    auto selector_node = f.take("selector");
    {
        Fields selector(r, selector_node, f.path("selector"));
        int defined = 0;
        for (std::string_view kind : {"meshService", "meshExternalService", "meshMultiZoneService"}) {
            // `meshService: {}` selects; `meshService:` (null) is absent, as in Go.
            auto one = selector.take(kind);
            if (!one.IsDefined()) continue;
            ++defined;
            Fields sel(r, one, selector.path(kind));
            auto labels = read_string_map(r, sel.take("matchLabels"), sel.path("matchLabels"));
            if (kind == "meshExternalService") {
                out.selects_mesh_external_services = true;
                out.match_labels = std::move(labels);
            }
        }
        if (defined != 1)
            r.error(present(selector_node) ? selector_node : spec, f.path("selector"),
                    "exact one selector (meshService, meshExternalService) must be defined");
    }

    out.extension = decode_extension(r, f.take("extension"), f.path("extension"));

    auto template_node = f.take("template");
    auto text = read_string(r, template_node, f.path("template"));
    if (!text || text->empty()) {
        r.error(present(template_node) ? template_node : spec, f.path("template"), "must not be empty");
        return;
    }
    out.template_text = *text;
    auto parsed = Template::parse(*text);
    if (!parsed) {
        r.error(template_node, f.path("template"), "couldn't parse template: " + parsed.error());
        return;
    }
    // Rendered once with Kuma's stand-in values (every label reads "label"), so that a
    // template that can never give a valid name (upper case, a leading dot, "..") is refused
    // now, in Kuma's words, rather than at generation time.
    Template::Values stub{"name", "displayname", "namespace", "mesh", "zone", {}};
    for (const auto& piece : parsed->pieces())
        if (piece.type == Template::Piece::Type::label) stub.labels[piece.text] = "label";
    auto rendered = parsed->render(stub);
    if (!rendered) {
        r.error(template_node, f.path("template"), "couldn't render template with stub values: " + rendered.error());
        return;
    }
    if (auto violations = dns1123_subdomain_violations(*rendered); !violations.empty())
        r.error(template_node, f.path("template"),
                "template renders to " + excerpt(*rendered, hostname_excerpt_bytes) +
                    " which is not a valid DNS name: " + join_violations(violations));
}

}  // namespace conf::detail
