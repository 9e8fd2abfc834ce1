// Names of endpoints: wildcard certificates against subjectAltNames (RFC 6125 as Envoy reads
// it), the hosts file read before DNS, and the events an operator reads when a name's
// addresses change or stop resolving. Unit tests of the parts, then the real mesd with one
// and with four workers.
#include "conf/conf.hpp"
#include "proxy/detail/resolver.hpp"
#include "proxy/detail/tls.hpp"
#include "test/support/certs.hpp"
#include "test/support/mesd.hpp"
#include "test/support/net.hpp"
#include "test/support/text.hpp"
#include "test/support/process.hpp"
#include "test/support/tempdir.hpp"

#include <catch2/catch.hpp>

#include <openssl/ssl.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

using namespace test_support;
using Dir = test_support::TempDir;
using namespace std::chrono_literals;

namespace {

const std::string openssl = "/usr/bin/openssl";
const std::string dig = "/usr/bin/dig";
const std::string socat = "/usr/bin/socat";

std::size_t count(const std::string& text, const std::string& what)
{
    std::size_t n = 0;
    for (auto at = text.find(what); at != std::string::npos; at = text.find(what, at + what.size())) ++n;
    return n;
}

// A TLS handshake in memory between `client` (a TlsContext's session) and a server holding
// `leaf`; true when it completed.
bool handshake(SSL* client, const KeyPair& leaf)
{
    SSL_CTX* sctx = SSL_CTX_new(TLS_server_method());
    BIO* cb = BIO_new_mem_buf(leaf.cert_pem.data(), static_cast<int>(leaf.cert_pem.size()));
    X509* cert = PEM_read_bio_X509(cb, nullptr, nullptr, nullptr);
    BIO_free(cb);
    BIO* kb = BIO_new_mem_buf(leaf.key_pem.data(), static_cast<int>(leaf.key_pem.size()));
    EVP_PKEY* key = PEM_read_bio_PrivateKey(kb, nullptr, nullptr, nullptr);
    BIO_free(kb);
    SSL_CTX_use_certificate(sctx, cert);
    SSL_CTX_use_PrivateKey(sctx, key);
    X509_free(cert);
    EVP_PKEY_free(key);
    SSL* server = SSL_new(sctx);
    SSL_set_bio(server, BIO_new(BIO_s_mem()), BIO_new(BIO_s_mem()));
    SSL_set_accept_state(server);
    auto move = [](SSL* from, SSL* to) {
        char buf[16384];
        int n;
        while ((n = BIO_read(SSL_get_wbio(from), buf, sizeof buf)) > 0) BIO_write(SSL_get_rbio(to), buf, n);
    };
    bool done = false;
    for (int round = 0; round < 20 && !done; ++round) {
        int c = SSL_do_handshake(client);
        move(client, server);
        SSL_do_handshake(server);
        move(server, client);
        done = c == 1;
    }
    SSL_free(server);
    SSL_CTX_free(sctx);
    return done;
}

// check_names of a Secured context with `configure` applied, against a server holding `leaf`.
std::string names_verdict(const KeyPair& ca, const KeyPair& leaf, const std::string& server_name,
                          std::vector<conf::SubjectAltName> sans, const std::string& endpoint = "127.0.0.1")
{
    conf::Tls tls;
    tls.enabled = true;
    tls.server_name = server_name;
    tls.subject_alt_names = std::move(sans);
    proxy::detail::TlsMaterial material;
    material.ca_pem = ca.cert_pem;
    auto ctx = proxy::detail::TlsContext::make(tls, conf::Protocol::tcp, material);
    REQUIRE(ctx);
    bool is_ip = endpoint == "127.0.0.1";
    SSL* ssl = (*ctx)->start(endpoint, is_ip, endpoint + ":443");
    REQUIRE(ssl);
    REQUIRE(handshake(ssl, leaf));
    auto verdict = (*ctx)->check_names(ssl, endpoint, is_ip);
    SSL_free(ssl);
    return verdict;
}

conf::SubjectAltName san(conf::SanMatch type, std::string value)
{
    conf::SubjectAltName s;
    s.type = type;
    s.value = std::move(value);
    return s;
}

// socat on HOST:PORT answering each connection with `word`.
struct Backend {
    std::unique_ptr<Child> child;
    Backend(const std::string& host, int port, const std::string& word)
    {
        child = std::make_unique<Child>(std::vector<std::string>{
            socat, "TCP-LISTEN:" + std::to_string(port) + ",bind=" + host + ",fork,reuseaddr", "SYSTEM:'echo " + word + "'"});
        REQUIRE(eventually([&] { return accepting(host, port); }));
    }
};

const std::string generator =
    "type: HostnameGenerator\nname: all\nspec:\n  selector:\n    meshExternalService: {}\n"
    "  template: \"{{ .Name }}.mesh\"\n";

std::string mes(const std::string& name, int match_port, const std::string& address, int port, const std::string& tls = "")
{
    return "---\ntype: MeshExternalService\nname: " + name + "\nspec:\n  match: {port: " + std::to_string(match_port) +
           "}\n  endpoints: [{address: " + address + ", port: " + std::to_string(port) + "}]\n" + tls;
}

std::string vip_of(const Mesd& mesd, const std::string& name)
{
    return trim(output_of({dig, "@127.0.0.1", "-p", std::to_string(mesd.dns_port()), name + ".mesh", "+short", "+tries=1",
                           "+time=2"}));
}

}  // namespace

// ---- Wildcard certificates ---------------------------------------------------------------------

TEST_CASE("an exact DNS subjectAltName matches a wildcard SAN in the left-most label only")
{
    using proxy::detail::dns_san_matches;
    CHECK(dns_san_matches("foo.wild.ext.test", "*.wild.ext.test"));
    CHECK(dns_san_matches("FOO.Wild.ext.test", "*.WILD.EXT.TEST"));
    CHECK(dns_san_matches("foo.wild.ext.test.", "*.wild.ext.test"));
    CHECK(dns_san_matches("api.test", "api.test"));
    CHECK_FALSE(dns_san_matches("wild.ext.test", "*.wild.ext.test"));      // fewer labels
    CHECK_FALSE(dns_san_matches("a.b.wild.ext.test", "*.wild.ext.test"));  // one label only
    CHECK_FALSE(dns_san_matches(".wild.ext.test", "*.wild.ext.test"));     // an empty label
    CHECK_FALSE(dns_san_matches("foo.wild.ext.test", "f*.wild.ext.test"));  // not a whole label
    CHECK_FALSE(dns_san_matches("foo.wild.ext.test", "*.*.ext.test"));
    CHECK_FALSE(dns_san_matches("foo.wildext.test", "*.wild.ext.test"));
    CHECK_FALSE(dns_san_matches("foo.wild.ext.test", "*"));
    CHECK_FALSE(dns_san_matches("", "*.wild.ext.test"));
    CHECK_FALSE(dns_san_matches("*.wild.ext.test", "foo.wild.ext.test"));  // the configured name is no pattern
}

TEST_CASE("check_names with a wildcard certificate: Exact SANs, Prefix on the SAN's text, and the server name")
{
    auto ca = make_ca("names test CA");
    auto wild = make_leaf(ca, "wild", {"DNS:*.wild.ext.test"});
    using conf::SanMatch;
    // Exact: DNS matching.
    CHECK(names_verdict(ca, wild, "other.test", {san(SanMatch::exact, "foo.wild.ext.test")}) == "");
    CHECK(names_verdict(ca, wild, "other.test", {san(SanMatch::exact, "FOO.wild.ext.test")}) == "");
    CHECK_THAT(names_verdict(ca, wild, "other.test", {san(SanMatch::exact, "wild.ext.test")}),
               Catch::Contains("certificate name mismatch"));
    CHECK_THAT(names_verdict(ca, wild, "other.test", {san(SanMatch::exact, "a.b.wild.ext.test")}),
               Catch::Contains("certificate name mismatch"));
    // Prefix is no wildcard match: it compares the SAN as written (Envoy's StringMatcher).
    CHECK_THAT(names_verdict(ca, wild, "other.test", {san(SanMatch::prefix, "foo.")}),
               Catch::Contains("certificate name mismatch"));
    CHECK(names_verdict(ca, wild, "other.test", {san(SanMatch::prefix, "*.wild.")}) == "");
    // No SAN list: the server name (OpenSSL's host check) takes the wildcard too, one label.
    CHECK(names_verdict(ca, wild, "foo.wild.ext.test", {}) == "");
    CHECK_THAT(names_verdict(ca, wild, "wild.ext.test", {}), Catch::Contains("certificate name mismatch"));
    CHECK_THAT(names_verdict(ca, wild, "a.b.wild.ext.test", {}), Catch::Contains("certificate name mismatch"));
    // And the endpoint's hostname when there is no serverName.
    CHECK(names_verdict(ca, wild, "", {}, "bar.wild.ext.test") == "");
    // An exact SAN still matches a plain DNS SAN.
    auto plain = make_leaf(ca, "api", {"DNS:api.test"});
    CHECK(names_verdict(ca, plain, "other.test", {san(SanMatch::exact, "api.test")}) == "");
    CHECK_THAT(names_verdict(ca, plain, "other.test", {san(SanMatch::exact, "x.api.test")}),
               Catch::Contains("certificate name mismatch"));
}

TEST_CASE("a wildcard certificate through mesd: Exact subjectAltNames and serverName against openssl s_server")
{
    int workers = GENERATE(1, 4);
    DYNAMIC_SECTION("workers " << workers)
    {
        Dir dir;
        auto ca = make_ca("names test CA");
        auto wild = make_leaf(ca, "wild", {"DNS:*.wild.ext.test"});
        int port = free_tcp_port();
        auto cert = dir.write("wild.crt", wild.cert_pem);
        auto key = dir.write("wild.key", wild.key_pem);
        Child server({openssl, "s_server", "-accept", "127.0.0.1:" + std::to_string(port), "-cert", cert, "-key", key, "-rev",
                      "-quiet"},
                     (dir.path / "s_server.out").string(), (dir.path / "s_server.err").string());
        REQUIRE(eventually([&] { return accepting("127.0.0.1", port); }));

        const std::string ca_inline = "      caCert:\n        inlineString: |\n" + indent(ca.cert_pem, 10);
        auto tls = [&](const std::string& verification) {
            return "  tls:\n    enabled: true\n    verification:\n" + verification + ca_inline;
        };
        std::string resources = generator;
        resources += mes("exact", 9551, "127.0.0.1", port,
                         tls("      serverName: other.test\n      subjectAltNames: [{type: Exact, value: foo.wild.ext.test}]\n"));
        resources += mes("exact-bare", 9502, "127.0.0.1", port,
                         tls("      serverName: other.test\n      subjectAltNames: [{type: Exact, value: wild.ext.test}]\n"));
        resources += mes("exact-deep", 9503, "127.0.0.1", port,
                         tls("      serverName: other.test\n      subjectAltNames: [{type: Exact, value: a.b.wild.ext.test}]\n"));
        resources += mes("sni", 9504, "127.0.0.1", port, tls("      serverName: foo.wild.ext.test\n"));
        resources += mes("prefix", 9505, "127.0.0.1", port,
                         tls("      serverName: other.test\n      subjectAltNames: [{type: Prefix, value: foo.wild}]\n"));
        dir.write("resources/all.yaml", resources);
        MesdOptions options;
        options.conf_dir = (dir.path / "resources").string();
        options.dns_section = "  forward:\n    enabled: false\n";
        options.extra_config = "proxy:\n  connectTimeout: 3s\n  ejectAfter: 100\n";
        options.extra_args = {"--workers", std::to_string(workers)};
        Mesd mesd(dir.path / "mesd", options);

        for (int i = 0; i < workers; ++i) {  // every worker's connections are checked the same way
            CHECK(say(vip_of(mesd, "exact"), 9551, "hello\n") == "olleh\n");
            CHECK(say(vip_of(mesd, "sni"), 9504, "hello\n") == "olleh\n");
        }
        CHECK(say(vip_of(mesd, "exact-bare"), 9502, "hello\n") == "");
        CHECK(say(vip_of(mesd, "exact-deep"), 9503, "hello\n") == "");
        CHECK(say(vip_of(mesd, "prefix"), 9505, "hello\n") == "");
        auto log = mesd.log();
        CHECK_THAT(log, Catch::Contains("name=exact-bare reason=\"certificate name mismatch"));
        CHECK_THAT(log, !Catch::Contains("name=exact reason="));
    }
}

// ---- The hosts file ------------------------------------------------------------------------------

TEST_CASE("hosts file lines: comments, aliases, both families, case, what is skipped")
{
    using proxy::detail::HostsFile;
    auto t = HostsFile::parse("# a comment\n"
                              "127.0.0.1\tlocalhost   Local.Alias # trailing comment\n"
                              "::1 localhost ip6-localhost\r\n"
                              "10.0.0.5 db.internal db\n"
                              "10.0.0.6 DB.internal\n"
                              "   \n"
                              "fe80::1%eth0 zoned.test\n"
                              "not-an-address bogus.test\n"
                              "10.0.0.7\n"
                              "2001:db8::7 v6only.test\n"
                              "10.0.0.5 db.internal\n");
    auto text = [&](const std::string& name) {
        std::string out;
        auto it = t.find(name);
        if (it == t.end()) return std::string("-");
        for (const auto& a : it->second) out += (out.empty() ? "" : " ") + a.to_string();
        return out;
    };
    CHECK(text("localhost") == "127.0.0.1 ::1");
    CHECK(text("local.alias") == "127.0.0.1");
    CHECK(text("ip6-localhost") == "::1");
    CHECK(text("db.internal") == "10.0.0.5 10.0.0.6");  // every line, each address once
    CHECK(text("db") == "10.0.0.5");
    CHECK(text("v6only.test") == "2001:db8::7");
    CHECK(text("zoned.test") == "-");
    CHECK(text("bogus.test") == "-");
    CHECK(t.size() == 6);
}

TEST_CASE("hosts file lookups: case-insensitive, read again when the file changes, nothing when it is gone")
{
    Dir dir;
    auto path = dir.write("hosts", "127.0.0.21 Made.Up.Test\n");
    proxy::detail::HostsFile hosts(path, 0ms);
    auto one = hosts.lookup("made.up.TEST.");
    REQUIRE(one);
    REQUIRE(one->size() == 1);
    CHECK((*one)[0].to_string() == "127.0.0.21");
    CHECK_FALSE(hosts.lookup("other.test"));
    // Same size, new content: the modification time or the inode tells.
    std::filesystem::remove(path);
    dir.write("hosts", "127.0.0.22 made.up.test\n");
    auto two = hosts.lookup("made.up.test");
    REQUIRE(two);
    CHECK((*two)[0].to_string() == "127.0.0.22");
    std::filesystem::remove(path);
    CHECK_FALSE(hosts.lookup("made.up.test"));
    proxy::detail::HostsFile none("");
    CHECK_FALSE(none.lookup("localhost"));

    // Checked at most once per interval: a change within it is not seen yet.
    dir.write("hosts", "127.0.0.23 made.up.test\n");
    proxy::detail::HostsFile slow(path, 1h);
    REQUIRE(slow.lookup("made.up.test"));
    std::filesystem::remove(path);
    CHECK(slow.lookup("made.up.test"));
}

TEST_CASE("name events are told once per change, from any number of resolvers")
{
    std::vector<std::string> told;
    proxy::detail::NameEvents events([&](bool warn, std::string message, proxy::detail::NameEvents::Fields fields) {
        std::string line = std::string(warn ? "warn " : "info ") + message;
        for (const auto& [k, v] : fields) line += " " + k + "=" + v;
        told.push_back(line);
    });
    auto a = *vip::Address::parse("127.0.0.21"), b = *vip::Address::parse("127.0.0.22");
    for (int worker = 0; worker < 4; ++worker) events.outcome("made.up.test", {a}, "", "hosts");
    for (int worker = 0; worker < 4; ++worker) events.outcome("made.up.test", {b, a}, "", "dns");
    events.outcome("made.up.test", {a, b}, "", "dns");  // the same set in another order
    for (int worker = 0; worker < 4; ++worker) events.outcome("made.up.test", {a, b}, "NXDOMAIN", "dns");
    events.outcome("made.up.test", {a, b}, "", "dns");
    events.outcome("gone.test", {}, "no answer from 127.0.0.1:53 within 1000ms", "dns");
    events.outcome("gone.test", {}, "NXDOMAIN", "dns");
    REQUIRE(told.size() == 5);
    CHECK(told[0] == "info endpoint addresses changed name=made.up.test old=none new=127.0.0.21 source=hosts");
    CHECK(told[1] == "info endpoint addresses changed name=made.up.test old=127.0.0.21 new=127.0.0.22,127.0.0.21 source=dns");
    CHECK(told[2] == "warn endpoint name does not resolve name=made.up.test reason=NXDOMAIN keeping=127.0.0.21,127.0.0.22");
    CHECK(told[3] == "info endpoint name resolves again name=made.up.test addresses=127.0.0.21,127.0.0.22 source=dns");
    CHECK(told[4] == "warn endpoint name does not resolve name=gone.test reason=no answer from 127.0.0.1:53 within 1000ms");
}

TEST_CASE("proxy.hostsFile in the configuration")
{
    auto r = conf::load_config_text("proxy:\n  hostsFile: /tmp/hosts\n", "m.yaml");
    REQUIRE(r.ok());
    CHECK(r.config.proxy.hosts_file == "/tmp/hosts");
    auto none = conf::load_config_text("proxy:\n  hostsFile: \"\"\n", "m.yaml");
    REQUIRE(none.ok());
    CHECK(none.config.proxy.hosts_file.empty());
    auto fallback = conf::load_config_text("proxy: {}\n", "m.yaml");
    REQUIRE(fallback.ok());
    CHECK(fallback.config.proxy.hosts_file == "/etc/hosts");
    auto bad = conf::load_config_text("proxy:\n  hostsFile: etc/hosts\n", "m.yaml");
    REQUIRE(bad.errors.size() == 1);
    CHECK(bad.errors[0].format() == "m.yaml:2:14: proxy.hostsFile: must be an absolute path (or \"\" for none), got \"etc/hosts\"");
    auto list = conf::load_config_text("proxy:\n  hostsFile: [a]\n", "m.yaml");
    REQUIRE(list.errors.size() == 1);
    CHECK_THAT(list.errors[0].format(), Catch::StartsWith("m.yaml:2:14: proxy.hostsFile: "));
}

TEST_CASE("a name from the hosts file reaches its backend, follows the file, and is logged once")
{
    int workers = GENERATE(1, 4);
    DYNAMIC_SECTION("workers " << workers)
    {
        Dir dir;
        int port = free_tcp_port();
        Backend one("127.0.0.21", port, "one");
        Backend two("127.0.0.22", port, "two");
        auto hosts = dir.write("hosts", "# test hosts\n127.0.0.21 made.up.test alias.up.test\n");
        // A nameserver that never answers and keeps what it is asked: only the hosts file can
        // resolve, and names the file lists must never be asked.
        struct Fd {
            int fd;
            ~Fd() { ::close(fd); }
        } socket_{::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0)};
        int silent = socket_.fd;
        sockaddr_in addr{};
        addr.sin_family = AF_INET;
        addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        REQUIRE(::bind(silent, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
        socklen_t len = sizeof addr;
        ::getsockname(silent, reinterpret_cast<sockaddr*>(&addr), &len);
        int dead_dns = ntohs(addr.sin_port);
        auto asked = [&] {
            std::string all;
            char buf[4096];
            ssize_t n;
            while ((n = ::recv(silent, buf, sizeof buf, MSG_DONTWAIT)) > 0) all.append(buf, static_cast<std::size_t>(n));
            return all;
        };
        dir.write("resources/all.yaml", generator + mes("hosted", 7101, "made.up.test", port) +
                                            mes("aliased", 7102, "alias.up.test", port) +
                                            mes("nowhere", 7103, "nowhere.up.test", port));
        MesdOptions options;
        options.conf_dir = (dir.path / "resources").string();
        options.dns_section = "  forward:\n    enabled: false\n";
        options.extra_config = "proxy:\n  connectTimeout: 2s\n  resolveTimeout: 300ms\n  hostsFile: " + hosts +
                               "\n  resolvers: [\"127.0.0.1:" + std::to_string(dead_dns) + "\"]\n";
        options.extra_args = {"--workers", std::to_string(workers)};
        Mesd mesd(dir.path / "mesd", options);
        auto hosted = vip_of(mesd, "hosted");
        for (int i = 0; i < 2 * workers; ++i) CHECK(trim(echoed(hosted, 7101, "")) == "one");
        CHECK(trim(echoed(vip_of(mesd, "aliased"), 7102, "")) == "one");
        auto config = mesd.admin_get("/config");
        CHECK_THAT(config, Catch::Contains("\"127.0.0.21\""));

        // The file changes (a new inode, as editors and configuration tools write it): new
        // connections go to the new address within a second or two.
        std::filesystem::remove(hosts);
        dir.write("hosts", "127.0.0.22 made.up.test\n127.0.0.21 alias.up.test\n");
        CHECK(eventually([&] { return trim(echoed(hosted, 7101, "")) == "two"; }, 5s));
        for (int i = 0; i < 2 * workers; ++i) CHECK(trim(echoed(hosted, 7101, "")) == "two");

        // A name neither the file nor DNS knows: the client is reset, and the reason logged.
        for (int i = 0; i < 2 * workers; ++i) CHECK(trim(echoed(vip_of(mesd, "nowhere"), 7103, "", 3s)).empty());

        auto queries = asked();
        CHECK(queries.find(std::string("\x07nowhere\x02up\x04test")) != std::string::npos);
        CHECK(queries.find(std::string("\x04made\x02up\x04test")) == std::string::npos);
        CHECK(queries.find(std::string("\x05alias\x02up\x04test")) == std::string::npos);

        auto log = mesd.log();
        INFO(log);
        CHECK(count(log, "msg=\"endpoint addresses changed\" name=made.up.test old=none new=127.0.0.21 source=hosts") == 1);
        CHECK(count(log, "msg=\"endpoint addresses changed\" name=made.up.test old=127.0.0.21 new=127.0.0.22 source=hosts") == 1);
        CHECK(count(log, "msg=\"endpoint addresses changed\" name=made.up.test") == 2);
        CHECK(count(log, "msg=\"endpoint addresses changed\" name=alias.up.test") == 1);
        CHECK(count(log, "msg=\"endpoint name does not resolve\" name=nowhere.up.test reason=\"no answer from 127.0.0.1:" +
                             std::to_string(dead_dns) + " within 300ms\"") == 1);
        CHECK(count(log, "msg=\"endpoint name does not resolve\"") == 1);
    }
}

TEST_CASE("localhost resolves from /etc/hosts with no nameserver answering")
{
    int workers = GENERATE(1, 4);
    DYNAMIC_SECTION("workers " << workers)
    {
        Dir dir;
        int port = free_tcp_port();
        Backend local("127.0.0.1", port, "local");
        int dead_dns = free_udp_port();
        dir.write("resources/all.yaml", generator + mes("local", 7111, "localhost", port));
        MesdOptions options;
        options.conf_dir = (dir.path / "resources").string();
        options.dns_section = "  forward:\n    enabled: false\n";
        options.extra_config = "proxy:\n  connectTimeout: 2s\n  resolveTimeout: 300ms\n  resolvers: [\"127.0.0.1:" +
                               std::to_string(dead_dns) + "\"]\n";
        options.extra_args = {"--workers", std::to_string(workers)};
        Mesd mesd(dir.path / "mesd", options);
        auto vip = vip_of(mesd, "local");
        for (int i = 0; i < 2 * workers; ++i) CHECK(trim(echoed(vip, 7111, "")) == "local");
        CHECK(count(mesd.log(), "msg=\"endpoint addresses changed\" name=localhost") == 1);
        CHECK(count(mesd.log(), "source=hosts") == 1);
    }
}

TEST_CASE("a DNS name's change is logged once across workers, and the hosts file overrides DNS when it gains the name")
{
    int workers = GENERATE(1, 4);
    DYNAMIC_SECTION("workers " << workers)
    {
        Dir dir;
        int port = free_tcp_port();
        Backend one("127.0.0.31", port, "one");
        Backend two("127.0.0.32", port, "two");
        Backend three("127.0.0.33", port, "three");
        auto records = dir.write("records", "127.0.0.31 dns.up.test\n");
        auto hosts = dir.write("hosts", "# nothing yet\n");
        int dns_port = free_dual_port();
        Child dnsmasq({"/usr/sbin/dnsmasq", "-k", "--user=root", "--listen-address=127.0.0.1", "--bind-interfaces",
                       "--no-resolv", "--no-hosts", "--conf-file=/dev/null", "--pid-file=", "--local-ttl=1",
                       "--addn-hosts=" + records, "--port=" + std::to_string(dns_port)},
                      (dir.path / "dnsmasq.out").string(), (dir.path / "dnsmasq.err").string());
        auto lookup = [&] {
            return trim(output_of({dig, "@127.0.0.1", "-p", std::to_string(dns_port), "dns.up.test", "+short", "+tries=1",
                                   "+time=1"}));
        };
        REQUIRE(eventually([&] { return lookup() == "127.0.0.31"; }));
        dir.write("resources/all.yaml", generator + mes("named", 7121, "dns.up.test", port));
        MesdOptions options;
        options.conf_dir = (dir.path / "resources").string();
        options.dns_section = "  forward:\n    enabled: false\n";
        options.extra_config = "proxy:\n  connectTimeout: 2s\n  dnsMinTtl: 1s\n  resolveTimeout: 1s\n  hostsFile: " + hosts +
                               "\n  resolvers: [\"127.0.0.1:" + std::to_string(dns_port) + "\"]\n";
        options.extra_args = {"--workers", std::to_string(workers)};
        Mesd mesd(dir.path / "mesd", options);
        auto vip = vip_of(mesd, "named");
        for (int i = 0; i < 2 * workers; ++i) CHECK(trim(echoed(vip, 7121, "")) == "one");

        std::ofstream(records) << "127.0.0.32 dns.up.test\n";
        dnsmasq.signal(SIGHUP);
        REQUIRE(eventually([&] { return lookup() == "127.0.0.32"; }));
        // Every worker's copy expires (TTL 1 s) and is asked again.
        CHECK(eventually([&] { return trim(echoed(vip, 7121, "")) == "two"; }, 5s));
        std::this_thread::sleep_for(2500ms);
        for (int i = 0; i < 2 * workers; ++i) CHECK(trim(echoed(vip, 7121, "")) == "two");

        std::filesystem::remove(hosts);
        dir.write("hosts", "127.0.0.33 dns.up.test\n");
        CHECK(eventually([&] { return trim(echoed(vip, 7121, "")) == "three"; }, 5s));
        for (int i = 0; i < 2 * workers; ++i) CHECK(trim(echoed(vip, 7121, "")) == "three");

        auto log = mesd.log();
        INFO(log);
        CHECK(count(log, "msg=\"endpoint addresses changed\" name=dns.up.test old=none new=127.0.0.31 source=dns") == 1);
        CHECK(count(log, "msg=\"endpoint addresses changed\" name=dns.up.test old=127.0.0.31 new=127.0.0.32 source=dns") == 1);
        CHECK(count(log, "msg=\"endpoint addresses changed\" name=dns.up.test old=127.0.0.32 new=127.0.0.33 source=hosts") == 1);
        CHECK(count(log, "msg=\"endpoint addresses changed\"") == 3);
        CHECK(count(log, "endpoint name does not resolve") == 0);
    }
}
