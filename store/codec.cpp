#include "store/detail/codec.hpp"

namespace store::detail {

namespace {

constexpr std::uint8_t record_version = 1;
constexpr std::uint8_t kuma_shape_bit = 0x80;  // a data source written in Kuma's current shape

template <class T>
bool read_into(std::optional<T> v, T& out)
{
    if (!v) return false;
    out = std::move(*v);
    return true;
}

bool read_small(Reader& r, std::size_t& out)
{
    auto v = r.varint();
    // No list in a resource is anywhere near this long; a larger count means damage. Every
    // element takes at least a byte, so a count beyond what is left is damage too, and is
    // refused before the caller sizes a vector by it.
    if (!v || *v > (1u << 24) || *v > r.remaining()) return false;
    out = static_cast<std::size_t>(*v);
    return true;
}

void encode_string_map(Writer& w, const std::map<std::string, std::string>& m)
{
    w.varint(m.size());
    for (const auto& [k, v] : m) {
        w.str(k);
        w.str(v);
    }
}

bool decode_string_map(Reader& r, std::map<std::string, std::string>& m)
{
    std::size_t n = 0;
    if (!read_small(r, n)) return false;
    for (std::size_t i = 0; i < n; ++i) {
        std::string k, v;
        if (!read_into(r.str(), k) || !read_into(r.str(), v)) return false;
        m.emplace(std::move(k), std::move(v));
    }
    return true;
}

void encode_optional_port(Writer& w, const std::optional<std::uint16_t>& p) { w.varint(p ? *p + 1u : 0u); }

bool decode_optional_port(Reader& r, std::optional<std::uint16_t>& p)
{
    auto v = r.varint();
    if (!v || *v > 65536) return false;
    if (*v == 0) p.reset();
    else p = static_cast<std::uint16_t>(*v - 1);
    return true;
}

void encode_source(Writer& w, const std::optional<conf::DataSource>& s)
{
    if (!s) {
        w.u8(0);
        return;
    }
    // The shape rides in the tag's high bit: records written before Kuma's shape existed read
    // as the seed's, unchanged.
    bool kuma = s->shape == conf::DataSource::Shape::kuma;
    w.u8(static_cast<std::uint8_t>((1 + static_cast<int>(s->type)) | (kuma ? kuma_shape_bit : 0)));
    w.str(s->value);
}

bool decode_source(Reader& r, std::optional<conf::DataSource>& s)
{
    auto tag = r.u8();
    if (!tag) return false;
    bool kuma = (*tag & kuma_shape_bit) != 0;
    std::uint8_t type = *tag & static_cast<std::uint8_t>(~kuma_shape_bit);
    if (type > 3 || (kuma && type == 0)) return false;
    if (type == 0) return true;
    conf::DataSource d;
    d.type = static_cast<conf::DataSource::Type>(type - 1);
    d.shape = kuma ? conf::DataSource::Shape::kuma : conf::DataSource::Shape::seed;
    if (!read_into(r.str(), d.value)) return false;
    s = std::move(d);
    return true;
}

template <class E>
bool decode_enum(Reader& r, E& out, std::uint8_t max)
{
    auto v = r.u8();
    if (!v || *v > max) return false;
    out = static_cast<E>(*v);
    return true;
}

void encode_mes(Writer& w, const conf::MeshExternalService& m)
{
    encode_optional_port(w, m.port);
    w.u8(static_cast<std::uint8_t>(m.protocol));
    w.varint(m.endpoints.size());
    for (const auto& e : m.endpoints) {
        w.str(e.address);
        w.u8(static_cast<std::uint8_t>(e.kind));
        encode_optional_port(w, e.port);
        w.u8(e.priority);
    }
    if (!m.tls) {
        w.u8(0);
        return;
    }
    const auto& t = *m.tls;
    w.u8(1);
    w.u8(static_cast<std::uint8_t>(t.enabled | (t.allow_renegotiation << 1)));
    w.u8(static_cast<std::uint8_t>(t.min));
    w.u8(static_cast<std::uint8_t>(t.max));
    w.u8(static_cast<std::uint8_t>(t.mode));
    w.str(t.server_name);
    w.varint(t.subject_alt_names.size());
    for (const auto& san : t.subject_alt_names) {
        w.u8(static_cast<std::uint8_t>(san.type));
        w.str(san.value);
    }
    encode_source(w, t.ca_cert);
    encode_source(w, t.client_cert);
    encode_source(w, t.client_key);
}

bool decode_mes(Reader& r, conf::MeshExternalService& m)
{
    std::size_t n = 0;
    if (!decode_optional_port(r, m.port) || !decode_enum(r, m.protocol, 3) || !read_small(r, n)) return false;
    m.endpoints.resize(n);
    for (auto& e : m.endpoints) {
        if (!read_into(r.str(), e.address) || !decode_enum(r, e.kind, 3) || !decode_optional_port(r, e.port))
            return false;
        auto prio = r.u8();
        if (!prio) return false;
        e.priority = *prio;
    }
    auto has_tls = r.u8();
    if (!has_tls || *has_tls > 1) return false;
    if (*has_tls == 0) return true;
    conf::Tls t;
    auto flags = r.u8();
    if (!flags) return false;
    t.enabled = *flags & 1;
    t.allow_renegotiation = (*flags >> 1) & 1;
    if (!decode_enum(r, t.min, 4) || !decode_enum(r, t.max, 4) || !decode_enum(r, t.mode, 3) ||
        !read_into(r.str(), t.server_name) || !read_small(r, n))
        return false;
    t.subject_alt_names.resize(n);
    for (auto& san : t.subject_alt_names)
        if (!decode_enum(r, san.type, 1) || !read_into(r.str(), san.value)) return false;
    if (!decode_source(r, t.ca_cert) || !decode_source(r, t.client_cert) || !decode_source(r, t.client_key))
        return false;
    m.tls = std::move(t);
    return true;
}

void encode_address(Writer& w, const std::optional<vip::Address>& a)
{
    if (!a) {
        w.u8(0);
        return;
    }
    auto b = a->bytes();
    w.u8(static_cast<std::uint8_t>(b.size()));
    w.bytes(b);
}

bool decode_address(Reader& r, std::optional<vip::Address>& a)
{
    auto len = r.u8();
    if (!len || (*len != 0 && *len != 4 && *len != 16)) return false;
    if (*len == 0) return true;
    auto bytes = r.take(*len);
    if (!bytes) return false;
    a = vip::Address::from_bytes(*bytes);
    return a.has_value();
}

}  // namespace

void Writer::varint(std::uint64_t v)
{
    while (v >= 0x80) {
        out_.push_back(static_cast<char>((v & 0x7f) | 0x80));
        v >>= 7;
    }
    out_.push_back(static_cast<char>(v));
}

void Writer::str(std::string_view s)
{
    varint(s.size());
    out_.append(s);
}

std::optional<std::uint8_t> Reader::u8()
{
    if (in_.empty()) return std::nullopt;
    auto v = static_cast<std::uint8_t>(in_.front());
    in_.remove_prefix(1);
    return v;
}

std::optional<std::uint64_t> Reader::varint()
{
    std::uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        auto b = u8();
        if (!b) return std::nullopt;
        v |= static_cast<std::uint64_t>(*b & 0x7f) << shift;
        if (!(*b & 0x80)) return v;
    }
    return std::nullopt;
}

std::optional<std::string_view> Reader::take(std::size_t n)
{
    if (n > remaining()) return std::nullopt;
    auto out = in_.substr(0, n);
    in_.remove_prefix(n);
    return out;
}

std::optional<std::string> Reader::str()
{
    auto len = varint();
    if (!len || *len > remaining()) return std::nullopt;
    std::string s(in_.substr(0, static_cast<std::size_t>(*len)));
    in_.remove_prefix(static_cast<std::size_t>(*len));
    return s;
}

namespace {

// Written after the spec only when there is one, so that a resource without an extension
// keeps the bytes it had before extensions were kept (records already stored, etcd values).
void encode_extension(Writer& w, const std::optional<conf::Extension>& ext)
{
    if (!ext) return;
    w.str(ext->type);
    w.u8(ext->config ? 1 : 0);
    if (ext->config) w.str(*ext->config);
}

// What is left of the resource's bytes after its spec: nothing, or its extension.
bool decode_extension(Reader& r, std::optional<conf::Extension>& ext)
{
    if (r.remaining() == 0) return true;
    conf::Extension e;
    if (!read_into(r.str(), e.type)) return false;
    auto has_config = r.u8();
    if (!has_config || *has_config > 1) return false;
    if (*has_config) {
        std::string config;
        if (!read_into(r.str(), config)) return false;
        e.config = std::move(config);
    }
    ext = std::move(e);
    return true;
}

}  // namespace

void encode_resource(Writer& w, const conf::Resource& r)
{
    w.u8(static_cast<std::uint8_t>(r.kind));
    w.str(r.mesh);
    w.str(r.name);
    encode_string_map(w, r.labels);
    switch (r.kind) {
    case conf::Kind::mesh_external_service:
        encode_mes(w, *r.mes());
        encode_extension(w, r.mes()->extension);
        break;
    case conf::Kind::hostname_generator: {
        const auto& g = *r.generator();
        w.u8(g.selects_mesh_external_services ? 1 : 0);
        encode_string_map(w, g.match_labels);
        w.str(g.template_text);
        encode_extension(w, g.extension);
        break;
    }
    case conf::Kind::secret: w.str(r.secret()->data); break;
    }
}

std::optional<conf::Resource> decode_resource(Reader& r)
{
    conf::Resource res;
    if (!decode_enum(r, res.kind, 2) || !read_into(r.str(), res.mesh) || !read_into(r.str(), res.name) ||
        !decode_string_map(r, res.labels))
        return std::nullopt;
    switch (res.kind) {
    case conf::Kind::mesh_external_service: {
        conf::MeshExternalService m;
        if (!decode_mes(r, m) || !decode_extension(r, m.extension)) return std::nullopt;
        res.spec = std::move(m);
        break;
    }
    case conf::Kind::hostname_generator: {
        conf::HostnameGenerator g;
        auto sel = r.u8();
        if (!sel || !decode_string_map(r, g.match_labels) || !read_into(r.str(), g.template_text) ||
            !decode_extension(r, g.extension))
            return std::nullopt;
        g.selects_mesh_external_services = *sel != 0;
        res.spec = std::move(g);
        break;
    }
    case conf::Kind::secret: {
        conf::Secret s;
        if (!read_into(r.str(), s.data)) return std::nullopt;
        res.spec = std::move(s);
        break;
    }
    }
    return res;
}

void encode_status(Writer& w, const MesStatus& s)
{
    encode_address(w, s.ipv4);
    encode_address(w, s.ipv6);
    w.str(s.vip_error);
    w.varint(s.hostnames.addresses.size());
    for (const auto& a : s.hostnames.addresses) {
        w.str(a.hostname);
        w.str(a.generator);
    }
    w.varint(s.hostnames.generators.size());
    for (const auto& g : s.hostnames.generators) {
        w.str(g.generator);
        w.varint(g.conditions.size());
        for (const auto& c : g.conditions) {
            w.str(c.type);
            w.str(c.status);
            w.str(c.reason);
            w.str(c.message);
        }
    }
}

std::optional<MesStatus> decode_status(Reader& r)
{
    MesStatus s;
    std::size_t n = 0;
    if (!decode_address(r, s.ipv4) || !decode_address(r, s.ipv6) || !read_into(r.str(), s.vip_error) ||
        !read_small(r, n))
        return std::nullopt;
    s.hostnames.addresses.resize(n);
    for (auto& a : s.hostnames.addresses)
        if (!read_into(r.str(), a.hostname) || !read_into(r.str(), a.generator)) return std::nullopt;
    if (!read_small(r, n)) return std::nullopt;
    s.hostnames.generators.resize(n);
    for (auto& g : s.hostnames.generators) {
        std::size_t m = 0;
        if (!read_into(r.str(), g.generator) || !read_small(r, m)) return std::nullopt;
        g.conditions.resize(m);
        for (auto& c : g.conditions)
            if (!read_into(r.str(), c.type) || !read_into(r.str(), c.status) || !read_into(r.str(), c.reason) ||
                !read_into(r.str(), c.message))
                return std::nullopt;
    }
    return s;
}

std::string encode_record(const Record& rec)
{
    Writer w;
    w.u8(record_version);
    w.varint(rec.created);
    w.varint(static_cast<std::uint64_t>(rec.created_at));
    w.varint(static_cast<std::uint64_t>(rec.modified_at));
    w.str(rec.resource_bytes);
    encode_status(w, rec.status);
    return std::move(w.data());
}

std::optional<Record> decode_record(std::string_view bytes)
{
    Reader r(bytes);
    Record rec;
    auto version = r.u8();
    if (!version || *version != record_version) return std::nullopt;
    auto created = r.varint();
    auto created_at = r.varint();
    auto modified_at = r.varint();
    if (!created || !created_at || !modified_at || !read_into(r.str(), rec.resource_bytes)) return std::nullopt;
    rec.created = *created;
    rec.created_at = static_cast<std::int64_t>(*created_at);
    rec.modified_at = static_cast<std::int64_t>(*modified_at);
    auto status = decode_status(r);
    if (!status || r.remaining() != 0) return std::nullopt;
    rec.status = std::move(*status);
    return rec;
}

}  // namespace store::detail
