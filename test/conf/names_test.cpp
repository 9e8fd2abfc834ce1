#include "conf/conf.hpp"

#include <catch2/catch.hpp>

#include <vector>

using namespace conf;

TEST_CASE("RFC 1035 labels as Kubernetes checks MES names")
{
    CHECK(is_rfc1035_label("mes-tcp"));
    CHECK(is_rfc1035_label("a"));
    CHECK(is_rfc1035_label(std::string(63, 'a')));
    CHECK_FALSE(is_rfc1035_label(std::string(64, 'a')));
    CHECK_FALSE(is_rfc1035_label("1external"));
    CHECK_FALSE(is_rfc1035_label("external.service"));
    CHECK_FALSE(is_rfc1035_label("Upper"));
    CHECK_FALSE(is_rfc1035_label("trailing-"));
    CHECK_FALSE(is_rfc1035_label(""));
}

TEST_CASE("lowercase RFC 1123 subdomains as generated hostnames must be")
{
    CHECK(is_rfc1123_subdomain("mes-http.mesh"));
    CHECK(is_rfc1123_subdomain("1external.service"));
    CHECK(is_rfc1123_subdomain("a.b.c"));
    CHECK_FALSE(is_rfc1123_subdomain("name.MESH"));
    CHECK_FALSE(is_rfc1123_subdomain(".name.mesh"));
    CHECK_FALSE(is_rfc1123_subdomain("name..mesh"));
    CHECK_FALSE(is_rfc1123_subdomain("name_x.mesh"));
    CHECK_FALSE(is_rfc1123_subdomain("name.mesh."));
    CHECK_FALSE(is_rfc1123_subdomain("-name.mesh"));
    CHECK_FALSE(is_rfc1123_subdomain(std::string(64, 'a') + ".mesh"));
    CHECK_FALSE(is_rfc1123_subdomain(""));
}

TEST_CASE("DNS names accepted as endpoint addresses and server names")
{
    CHECK(is_dns_name("tcpbin.com"));
    CHECK(is_dns_name("grpcbin.test.k6.io"));
    CHECK(is_dns_name("Example.COM."));
    CHECK(is_dns_name("_srv.example.com"));
    CHECK(is_dns_name("localhost"));
    CHECK_FALSE(is_dns_name("not[]valid"));
    CHECK_FALSE(is_dns_name("a..b"));
    CHECK_FALSE(is_dns_name("-a.b"));
    CHECK_FALSE(is_dns_name("has space.com"));
    CHECK_FALSE(is_dns_name("1.2.3.999"));
    CHECK_FALSE(is_dns_name(std::string(254, 'a')));
    CHECK_FALSE(is_dns_name(""));
}

TEST_CASE("IP literals of both families")
{
    CHECK(ip_literal_kind("1.1.1.1") == AddressKind::ipv4);
    CHECK(ip_literal_kind("::1") == AddressKind::ipv6);
    CHECK(ip_literal_kind("fd00:fd02::1") == AddressKind::ipv6);
    CHECK_FALSE(ip_literal_kind("1.1.1"));
    CHECK_FALSE(ip_literal_kind("256.1.1.1"));
    CHECK_FALSE(ip_literal_kind("[::1]"));
    CHECK_FALSE(ip_literal_kind(std::string(100, '1')));
}

TEST_CASE("base64 round trip and strictness")
{
    for (std::string s : std::vector<std::string>{"", "f", "fo", "foo", "foob", "fooba", "foobar", std::string("\0\xff\x10", 3)})
        CHECK(base64_decode(base64_encode(s)) == s);
    CHECK(base64_encode("foobar") == "Zm9vYmFy");
    CHECK(base64_decode("Zm9v\nYmFy\n") == "foobar");
    CHECK(base64_decode("dGVzdA==") == "test");
    CHECK_FALSE(base64_decode("dGVzdA="));    // short padding
    CHECK_FALSE(base64_decode("dGVzdA=x"));   // data after padding
    CHECK_FALSE(base64_decode("!!!!"));
    CHECK_FALSE(base64_decode("dGVzdB=="));   // non-zero leftover bits
}

TEST_CASE("kinds by every name the command line takes")
{
    CHECK(kind_from_string("mes") == Kind::mesh_external_service);
    CHECK(kind_from_string("MeshExternalServices") == Kind::mesh_external_service);
    CHECK(kind_from_string("hostnamegenerators") == Kind::hostname_generator);
    CHECK(kind_from_string("secret") == Kind::secret);
    CHECK_FALSE(kind_from_string("meshservice"));
    CHECK(kind_name(Kind::hostname_generator) == "HostnameGenerator");
}
