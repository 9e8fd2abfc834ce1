// The stored form: round trips, and damaged bytes refused without a crash.
#include "store/detail/codec.hpp"

#include <catch2/catch.hpp>

using namespace store::detail;

namespace {

conf::Resource full_mes()
{
    conf::Resource r;
    r.kind = conf::Kind::mesh_external_service;
    r.mesh = "default";
    r.name = "mes-full";
    r.labels = {{"team", "a"}, {"kuma.io/display-name", "full"}};
    conf::MeshExternalService m;
    m.port = 443;
    m.protocol = conf::Protocol::http2;
    m.endpoints = {{"1.1.1.1", conf::AddressKind::ipv4, 12345, 0},
                   {"example.com", conf::AddressKind::hostname, std::nullopt, 3},
                   {"unix:///tmp/x.sock", conf::AddressKind::unix_socket, std::nullopt, 128}};
    conf::Tls t;
    t.enabled = true;
    t.min = conf::TlsVersion::tls12;
    t.max = conf::TlsVersion::tls13;
    t.allow_renegotiation = true;
    t.mode = conf::VerificationMode::skip_san;
    t.server_name = "example.com";
    t.subject_alt_names = {{conf::SanMatch::prefix, "spiffe://x"}};
    t.ca_cert = conf::DataSource{conf::DataSource::Type::inline_bytes, std::string("pem\0bytes", 9)};
    t.client_key = conf::DataSource{conf::DataSource::Type::secret, "key"};
    m.tls = t;
    r.spec = m;
    return r;
}

std::string encoded(const conf::Resource& r)
{
    Writer w;
    encode_resource(w, r);
    return w.data();
}

}  // namespace

TEST_CASE("resources round trip through the stored form")
{
    auto r = full_mes();
    auto bytes = encoded(r);
    Reader reader(bytes);
    auto back = decode_resource(reader);
    REQUIRE(back.has_value());
    CHECK(reader.remaining() == 0);
    CHECK(encoded(*back) == bytes);
    const auto& m = *back->mes();
    CHECK(m.port == 443);
    CHECK(m.endpoints.at(1).priority == 3);
    CHECK_FALSE(m.endpoints.at(1).port);
    CHECK(m.tls->ca_cert->value == std::string("pem\0bytes", 9));
    CHECK(m.tls->mode == conf::VerificationMode::skip_san);
    CHECK(back->labels.at("team") == "a");
    CHECK(bytes.size() < 200);
}

TEST_CASE("records with status round trip")
{
    Record rec;
    rec.created = 42;
    rec.created_at = 1'800'000'000;
    rec.modified_at = 1'800'000'100;
    rec.resource_bytes = encoded(full_mes());
    rec.status.ipv4 = vip::Address::parse("242.0.0.7");
    rec.status.ipv6 = vip::Address::parse("fd00::7");
    rec.status.hostnames.addresses = {{"mes-full.mesh", "HostnameGenerator", "g"}};
    rec.status.hostnames.generators = {{"g", {{"Generated", "True", "Generated", ""}}}};
    auto bytes = encode_record(rec);
    auto back = decode_record(bytes);
    REQUIRE(back.has_value());
    CHECK(back->created == 42);
    CHECK(back->modified_at == 1'800'000'100);
    CHECK(back->status == rec.status);
    CHECK(back->resource_bytes == rec.resource_bytes);
}

TEST_CASE("every truncation and a flipped version are refused")
{
    Record rec;
    rec.resource_bytes = encoded(full_mes());
    rec.status.ipv4 = vip::Address::parse("242.0.0.7");
    auto bytes = encode_record(rec);
    for (std::size_t n = 0; n < bytes.size(); ++n) CHECK_FALSE(decode_record(bytes.substr(0, n)).has_value());
    auto flipped = bytes;
    flipped[0] = 9;
    CHECK_FALSE(decode_record(flipped).has_value());
    auto resource = rec.resource_bytes;
    for (std::size_t n = 0; n < resource.size(); ++n) {
        Reader r(std::string_view(resource).substr(0, n));
        auto res = decode_resource(r);
        CHECK((!res.has_value() || r.remaining() != 0 || n == resource.size()));
    }
}
