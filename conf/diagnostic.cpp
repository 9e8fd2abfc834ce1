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

std::vector<std::string> referenced_secrets(const MeshExternalService& mes)
{
    std::vector<std::string> out;
    if (!mes.tls) return out;
    for (const auto* src : {&mes.tls->ca_cert, &mes.tls->client_cert, &mes.tls->client_key})
        if (*src && (*src)->type == DataSource::Type::secret) out.push_back((*src)->value);
    return out;
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

std::size_t invalid_utf8_at(std::string_view text)
{
    std::size_t i = 0;
    while (i < text.size()) {
        auto c = static_cast<unsigned char>(text[i]);
        if (c < 0x80) {
            ++i;
            continue;
        }
        // RFC 3629 section 4: the second byte's range depends on the first, which is what
        // rules out overlong forms (C0, C1, E0 80-9F, F0 80-8F), surrogates (ED A0-BF) and
        // code points past U+10FFFF (F4 90-BF, F5-FF).
        std::size_t len = 0;
        unsigned char lo = 0x80, hi = 0xbf;
        if (c >= 0xc2 && c <= 0xdf) len = 2;
        else if (c >= 0xe0 && c <= 0xef) {
            len = 3;
            if (c == 0xe0) lo = 0xa0;
            if (c == 0xed) hi = 0x9f;
        } else if (c >= 0xf0 && c <= 0xf4) {
            len = 4;
            if (c == 0xf0) lo = 0x90;
            if (c == 0xf4) hi = 0x8f;
        }
        if (len == 0 || len > text.size() - i) return i;
        auto second = static_cast<unsigned char>(text[i + 1]);
        if (second < lo || second > hi) return i;
        for (std::size_t k = 2; k < len; ++k)
            if ((static_cast<unsigned char>(text[i + k]) & 0xc0) != 0x80) return i;
        i += len;
    }
    return std::string_view::npos;
}

namespace {

void append_hex(std::string& out, unsigned char c)
{
    constexpr std::string_view digits = "0123456789abcdef";
    out += "\\x";
    out += digits[c >> 4];
    out += digits[c & 0xf];
}

}  // namespace

void append_logfmt_value(std::string& out, std::string_view raw)
{
    std::string v = escape_controls(raw);
    bool quote = v.empty() || v.size() != raw.size() || v.find_first_of(" \"=\\") != std::string::npos;
    if (!quote) {
        out += v;
        return;
    }
    // The value's own quotes and backslashes first, then the control bytes: their escapes'
    // backslashes are then the only single ones.
    std::string quoted;
    quoted.reserve(raw.size());
    for (char c : raw) {
        if (c == '"' || c == '\\') quoted += '\\';
        quoted += c;
    }
    out += '"';
    out += escape_controls(quoted);
    out += '"';
}

std::string escape_controls(std::string_view text)
{
    std::string out;
    out.reserve(text.size());
    std::size_t i = 0;
    while (i < text.size()) {
        auto c = static_cast<unsigned char>(text[i]);
        if (c == '\n') out += "\\n";
        else if (c == '\r') out += "\\r";
        else if (c == '\t') out += "\\t";
        else if (c < 0x20 || c == 0x7f) append_hex(out, c);
        if (c < 0x20 || c == 0x7f) {
            ++i;
            continue;
        }
        if (c < 0x80) {
            out += static_cast<char>(c);
            ++i;
            continue;
        }
        std::size_t len = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : 2;
        if (invalid_utf8_at(text.substr(i, len)) != std::string_view::npos) {
            append_hex(out, c);  // not UTF-8: one byte at a time
            ++i;
            continue;
        }
        // U+0080..U+009F (C2 80..C2 9F) are the C1 controls; CSI among them.
        if (c == 0xc2 && static_cast<unsigned char>(text[i + 1]) < 0xa0) {
            append_hex(out, c);
            append_hex(out, static_cast<unsigned char>(text[i + 1]));
        } else {
            out.append(text.substr(i, len));
        }
        i += len;
    }
    return out;
}

std::string go_quote(std::string_view text)
{
    static constexpr char hex[] = "0123456789abcdef";
    std::string out = "\"";
    for (char ch : text) {
        auto c = static_cast<unsigned char>(ch);
        switch (c) {
        case '"': out += "\\\""; break;
        case '\\': out += "\\\\"; break;
        case '\n': out += "\\n"; break;
        case '\t': out += "\\t"; break;
        case '\r': out += "\\r"; break;
        default:
            if (c < 0x20 || c == 0x7f) {
                out += "\\x";
                out += hex[c >> 4];
                out += hex[c & 15];
            } else {
                out += ch;
            }
        }
    }
    out += '"';
    return out;
}

std::string excerpt(std::string_view text, std::size_t max_bytes)
{
    if (text.size() <= max_bytes) return '"' + escape_controls(text) + '"';
    std::size_t cut = max_bytes;
    // Back up to the start of a character so the excerpt stays UTF-8.
    while (cut > 0 && (static_cast<unsigned char>(text[cut]) & 0xc0) == 0x80) --cut;
    return '"' + escape_controls(text.substr(0, cut)) + "...\" (" + std::to_string(text.size()) + " bytes)";
}

std::string Diagnostic::format() const
{
    // Paths and names are made of the input's keys and values: excerpts of them, escaped.
    auto shorten = [](std::string_view text) {
        if (text.size() <= 128) return escape_controls(text);
        std::size_t cut = 96;
        while (cut > 0 && (static_cast<unsigned char>(text[cut]) & 0xc0) == 0x80) --cut;
        return escape_controls(text.substr(0, cut)) + "...(" + std::to_string(text.size()) + " bytes)";
    };
    std::string out = escape_controls(mark.file);
    if (mark.line > 0) {
        out += ':' + std::to_string(mark.line);
        if (mark.col > 0) out += ':' + std::to_string(mark.col);
    }
    out += ": ";
    if (severity == Severity::warning) out += "warning: ";
    if (!kind.empty()) {
        out += kind;
        out += ' ';
        // A HostnameGenerator without a mesh belongs to none (it serves every mesh).
        if (!(mesh.empty() && kind == kind_name(Kind::hostname_generator))) {
            out += mesh.empty() ? std::string("?") : shorten(mesh);
            out += '/';
        }
        out += name.empty() ? std::string("?") : shorten(name);
        out += ": ";
    }
    if (!path.empty()) {
        out += shorten(path);
        out += ": ";
    }
    out += escape_controls(message);
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
