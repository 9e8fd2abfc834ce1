#include "conf/conf.hpp"

#include <algorithm>

namespace conf {

std::string_view kind_name(Kind kind)
{
    switch (kind) {
    case Kind::mesh_external_service: return "MeshExternalService";
    case Kind::hostname_generator: return "HostnameGenerator";
    case Kind::secret: return "Secret";
    }
    return "?";
}

std::optional<Kind> kind_from_string(std::string_view text)
{
    std::string lower(text);
    std::ranges::transform(lower, lower.begin(), [](char c) {
        return static_cast<char>(c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c);
    });
    if (lower == "meshexternalservice" || lower == "meshexternalservices" || lower == "mes")
        return Kind::mesh_external_service;
    if (lower == "hostnamegenerator" || lower == "hostnamegenerators" || lower == "hg")
        return Kind::hostname_generator;
    if (lower == "secret" || lower == "secrets") return Kind::secret;
    return std::nullopt;
}

std::string_view protocol_name(Protocol p)
{
    switch (p) {
    case Protocol::tcp: return "tcp";
    case Protocol::grpc: return "grpc";
    case Protocol::http: return "http";
    case Protocol::http2: return "http2";
    }
    return "?";
}

std::string_view tls_version_name(TlsVersion v)
{
    switch (v) {
    case TlsVersion::tls_auto: return "TLSAuto";
    case TlsVersion::tls10: return "TLS10";
    case TlsVersion::tls11: return "TLS11";
    case TlsVersion::tls12: return "TLS12";
    case TlsVersion::tls13: return "TLS13";
    }
    return "?";
}

std::string_view verification_mode_name(VerificationMode m)
{
    switch (m) {
    case VerificationMode::secured: return "Secured";
    case VerificationMode::skip_san: return "SkipSAN";
    case VerificationMode::skip_ca: return "SkipCA";
    case VerificationMode::skip_all: return "SkipAll";
    }
    return "?";
}

std::string_view san_match_name(SanMatch m)
{
    return m == SanMatch::exact ? "Exact" : "Prefix";
}

std::string_view Endpoint::unix_path() const
{
    constexpr std::string_view scheme = "unix://";
    if (kind != AddressKind::unix_socket) return {};
    return std::string_view(address).substr(scheme.size());
}

std::string Diagnostic::format() const
{
    std::string out = mark.file;
    if (mark.line > 0) {
        out += ':' + std::to_string(mark.line);
        if (mark.col > 0) out += ':' + std::to_string(mark.col);
    }
    out += ": ";
    if (severity == Severity::warning) out += "warning: ";
    if (!kind.empty()) {
        out += kind;
        out += ' ';
        out += mesh.empty() ? std::string("?") : mesh;
        out += '/';
        out += name.empty() ? std::string("?") : name;
        out += ": ";
    }
    if (!path.empty()) {
        out += path;
        out += ": ";
    }
    out += message;
    return out;
}

bool Document::valid() const
{
    return std::ranges::none_of(diagnostics,
                                [](const Diagnostic& d) { return d.severity == Severity::error; });
}

bool LoadResult::ok() const
{
    return file_errors.empty() && std::ranges::all_of(documents, &Document::valid);
}

std::size_t LoadResult::error_count() const
{
    std::size_t n = file_errors.size();
    for (const auto& doc : documents)
        n += static_cast<std::size_t>(std::ranges::count_if(
            doc.diagnostics, [](const Diagnostic& d) { return d.severity == Severity::error; }));
    return n;
}

}  // namespace conf
