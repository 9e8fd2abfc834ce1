// protocol http beyond the Host rewrite: a request asking to switch protocols switches the
// connection only when the endpoint agrees (what follows it is held until then), responses
// are followed to know which request each answers, and a request that reaches no endpoint
// gets a 502 or 503 in Envoy's words rather than a reset. The HostRewriter on its own, fed
// whole and a byte at a time, then the real mesd between curl or a raw socket and a backend
// of the test's own.
#include "proxy/detail/http.hpp"

#include "test/support/mesd.hpp"
#include "test/support/net.hpp"
#include "test/support/text.hpp"
#include "test/support/process.hpp"
#include "test/support/tempdir.hpp"

#include <catch2/catch.hpp>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <functional>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

using namespace test_support;
using Dir = test_support::TempDir;
using namespace std::chrono_literals;

namespace {

// ---- The rewriter on its own --------------------------------------------------------------

struct Fed {
    std::string up;  // what went to the endpoint
    bool ok = true;
};

// Feeds `data` from the client `piece` bytes at a time.
void client_says(proxy::detail::HostRewriter& r, const std::string& data, std::size_t piece, Fed& fed)
{
    for (std::size_t at = 0; at < data.size() && fed.ok; at += piece)
        fed.ok = r.feed(data.data() + at, std::min(piece, data.size() - at), fed.up);
}

// Feeds `data` from the endpoint `piece` bytes at a time; releases what was held when the
// answer it waited for came (as the connection does). True when that happened.
bool endpoint_says(proxy::detail::HostRewriter& r, const std::string& data, std::size_t piece, Fed& fed)
{
    bool answered = false;
    for (std::size_t at = 0; at < data.size(); at += piece) {
        if (r.watch(data.data() + at, std::min(piece, data.size() - at))) {
            answered = true;
            fed.ok = fed.ok && r.release(fed.up);
        }
    }
    return answered;
}

const std::string h2c_request =
    "GET /one HTTP/1.1\r\nHost: 127.242.0.1:8180\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
    "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n";
const std::string h2c_rewritten =
    "GET /one HTTP/1.1\r\nHost: api.example.com\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
    "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n";

// ---- Through mesd --------------------------------------------------------------------------

const std::string curl = "/usr/bin/curl";
const std::string dig = "/usr/bin/dig";
const std::string python = "/usr/bin/python3";
const std::string socat = "/usr/bin/socat";

// An HTTP/1.1 backend with keep-alive. Each request is answered with what it saw:
// "host=H path=P conn=N len=L" (N counts connections). /ws answers 101, sends "<raw>" and
// then echoes whatever comes, byte for byte; /slow… answers after half a second.
const std::string backend_script = R"PY(
import socket, sys, threading, time
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(('127.0.0.1', int(sys.argv[1])))
srv.listen(64)
lock = threading.Lock()
count = [0]

def serve(c, cid):
    buf = b''
    try:
        while True:
            while b'\r\n\r\n' not in buf:
                d = c.recv(65536)
                if not d:
                    return
                buf += d
            head, buf = buf.split(b'\r\n\r\n', 1)
            lines = head.split(b'\r\n')
            method, path, _ = lines[0].split(b' ', 2)
            hosts, length = [], 0
            for line in lines[1:]:
                k, v = line.split(b':', 1)
                k, v = k.strip().lower(), v.strip()
                if k == b'host':
                    hosts.append(v)
                if k == b'content-length':
                    length = int(v)
            while len(buf) < length:
                d = c.recv(65536)
                if not d:
                    return
                buf += d
            body, buf = buf[:length], buf[length:]
            if path == b'/ws':
                c.sendall(b'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n<raw>')
                if buf:
                    c.sendall(buf)
                while True:
                    d = c.recv(65536)
                    if not d:
                        return
                    c.sendall(d)
            if path.startswith(b'/slow'):
                time.sleep(0.5)
            msg = b'host=%s path=%s conn=%d len=%d\n' % (b','.join(hosts), path, cid, len(body))
            c.sendall(b'HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n' % len(msg) + msg)
    except OSError:
        pass
    finally:
        c.close()

while True:
    c, _ = srv.accept()
    with lock:
        count[0] += 1
        cid = count[0]
    threading.Thread(target=serve, args=(c, cid), daemon=True).start()
)PY";

struct Backend {
    std::unique_ptr<Child> child;
    int port = free_tcp_port();
    explicit Backend(const Dir& dir)
    {
        auto script = dir.write("backend.py", backend_script);
        child = std::make_unique<Child>(std::vector<std::string>{python, script, std::to_string(port)}, "/dev/null",
                                        (dir.path / "backend.err").string());
        REQUIRE(eventually([&] { return accepting("127.0.0.1", port); }));
    }
};

const std::string generator =
    "type: HostnameGenerator\nname: all\nspec:\n  selector:\n    meshExternalService: {}\n"
    "  template: \"{{ .Name }}.mesh\"\n";

std::string mes(const std::string& name, int port, const std::string& endpoints, const std::string& protocol = "http",
                const std::string& more = "")
{
    return "---\ntype: MeshExternalService\nname: " + name + "\nspec:\n  match: {port: " + std::to_string(port) +
           ", protocol: " + protocol + "}\n  endpoints: " + endpoints + "\n" + more;
}

std::string ep(const std::string& host, int port)
{
    return "{address: " + host + ", port: " + std::to_string(port) + "}";
}

// mesd with `resources` (after the generator) in a --conf-dir, `web.ext.test` naming
// 127.0.0.1 in its hosts file (no nameserver answers), `proxy` lines under `proxy:`. Workers
// as MESD_WORKERS says.
struct Setup {
    Dir dir;
    std::unique_ptr<Mesd> mesd;
    std::string access_log;

    explicit Setup(const std::string& resources, const std::string& proxy = "")
    {
        dir.write("resources/all.yaml", generator + resources);
        auto hosts = dir.write("hosts", "127.0.0.1 web.ext.test\n");
        access_log = (dir.path / "access.log").string();
        MesdOptions options;
        options.conf_dir = (dir.path / "resources").string();
        options.dns_section = "  forward:\n    enabled: false\n";
        options.extra_config = "proxy:\n  hostsFile: " + hosts + "\n  resolvers: [\"127.0.0.1:" + std::to_string(free_udp_port()) +
                               "\"]\n  resolveTimeout: 300ms\n  accessLog: {path: " + access_log + "}\n" +
                               (proxy.find("connectTimeout") == std::string::npos ? "  connectTimeout: 2s\n" : "") + proxy;
        mesd = std::make_unique<Mesd>(dir.path / "mesd", options);
    }
    std::string vip(const std::string& name) const
    {
        return trim(output_of({dig, "@127.0.0.1", "-p", std::to_string(mesd->dns_port()), name + ".mesh", "+short", "+tries=1",
                               "+time=2"}));
    }
    // The access log's lines for the MES `name`, once `n` of them are there.
    std::vector<std::string> log_lines(const std::string& name, std::size_t n) const
    {
        std::vector<std::string> lines;
        eventually([&] {
            lines.clear();
            std::istringstream in(file_text(access_log));
            for (std::string line; std::getline(in, line);)
                if (line.find(" name=" + name + " ") != std::string::npos) lines.push_back(line);
            return lines.size() >= n;
        });
        return lines;
    }
};

// A blocking socket to the proxy with a read that waits for a condition.
struct Client {
    int fd = -1;
    std::string got;  // everything read so far
    bool closed = false;
    int error = 0;

    Client(const std::string& host, int port) : fd(connect_to(host, port)) { REQUIRE(fd >= 0); }
    ~Client()
    {
        if (fd >= 0) ::close(fd);
    }
    void send(const std::string& data) const
    {
        REQUIRE(::send(fd, data.data(), data.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(data.size()));
    }
    // Reads until `done(got)`, EOF, an error or `wait` without data.
    bool read_until(const std::function<bool(const std::string&)>& done, std::chrono::milliseconds wait = 5s)
    {
        char buf[65536];
        while (!done(got)) {
            pollfd p{fd, POLLIN, 0};
            if (::poll(&p, 1, static_cast<int>(wait.count())) != 1) return false;
            auto n = ::recv(fd, buf, sizeof buf, 0);
            if (n <= 0) {
                closed = true;
                if (n < 0) error = errno;
                return done(got);
            }
            got.append(buf, static_cast<std::size_t>(n));
        }
        return true;
    }
    bool read_contains(const std::string& text, std::chrono::milliseconds wait = 5s)
    {
        return read_until([&](const std::string& g) { return g.find(text) != std::string::npos; }, wait);
    }
    void read_to_end(std::chrono::milliseconds wait = 5s)
    {
        read_until([&](const std::string&) { return false; }, wait);
    }
};

std::size_t count(const std::string& text, const std::string& what)
{
    std::size_t n = 0;
    for (auto at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
    return n;
}

std::string body_of(const std::string& response)
{
    auto at = response.find("\r\n\r\n");
    return at == std::string::npos ? "" : response.substr(at + 4);
}

// The first "conn=N" in what the backend answered; 0 when there is none.
int conn_of(const std::string& text)
{
    auto at = text.find(" conn=");
    return at == std::string::npos ? 0 : std::atoi(text.c_str() + at + 6);
}

const std::string refused_body = "upstream connect error or disconnect/reset before headers. reset reason: connection failure";

}  // namespace

// ---- The rewriter --------------------------------------------------------------------------

TEST_CASE("a declined h2c upgrade: what the client sent after it is held then rewritten as requests")
{
    const std::string next = "GET /two HTTP/1.1\r\nHost: 127.242.0.1:8180\r\n\r\n";
    for (std::size_t piece : {std::size_t{4096}, std::size_t{1}, std::size_t{5}}) {
        INFO("fed " << piece << " bytes at a time");
        proxy::detail::HostRewriter r("api.example.com");
        Fed fed;
        client_says(r, h2c_request + next, piece, fed);
        REQUIRE(fed.ok);
        CHECK(fed.up == h2c_rewritten);
        CHECK(r.waiting());
        CHECK(r.held() == next.size());
        // Not the answer yet: a 100 Continue is interim.
        CHECK_FALSE(endpoint_says(r, "HTTP/1.1 100 Continue\r\n\r\n", piece, fed));
        CHECK(r.waiting());
        CHECK(endpoint_says(r, "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\none", piece, fed));
        REQUIRE(fed.ok);
        CHECK_FALSE(r.waiting());
        CHECK_FALSE(r.switched());
        CHECK(fed.up == h2c_rewritten + "GET /two HTTP/1.1\r\nHost: api.example.com\r\n\r\n");
        // And the connection stays HTTP: another request is rewritten at once.
        client_says(r, "GET /three HTTP/1.1\r\nHost: x\r\n\r\n", piece, fed);
        CHECK(fed.up.ends_with("GET /three HTTP/1.1\r\nHost: api.example.com\r\n\r\n"));
    }
}

TEST_CASE("a 101 switches both ways: held bytes and all later ones pass untouched")
{
    const std::string ws = "GET /ws HTTP/1.1\r\nHost: v\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n";
    const std::string frames = "\x81\x05hello GET /x HTTP/1.1\r\nHost: keep\r\n\r\n";
    for (std::size_t piece : {std::size_t{4096}, std::size_t{1}, std::size_t{3}}) {
        INFO("fed " << piece << " bytes at a time");
        proxy::detail::HostRewriter r("api.example.com");
        Fed fed;
        client_says(r, ws + frames, piece, fed);
        REQUIRE(fed.ok);
        CHECK(fed.up == "GET /ws HTTP/1.1\r\nHost: api.example.com\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n");
        fed.up.clear();
        CHECK(endpoint_says(r,
                            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
                            "\x82\x03" "abc HTTP/1.1 200 OK\r\n\r\n",
                            piece, fed));
        REQUIRE(fed.ok);
        CHECK(r.switched());
        CHECK(fed.up == frames);
        fed.up.clear();
        client_says(r, std::string("not HTTP at all \x00\xff", 18), piece, fed);
        CHECK(fed.ok);
        CHECK(fed.up == std::string("not HTTP at all \x00\xff", 18));
        CHECK_FALSE(r.watch("garbage", 7));
    }
}

TEST_CASE("responses are matched to requests: HEAD 204 and 304 carry no body and interim ones are not final")
{
    // Pipelined: a HEAD, a GET, a POST with Expect, then a WebSocket request that is refused.
    const std::string requests =
        "HEAD /h HTTP/1.1\r\nHost: a\r\n\r\n"
        "GET /g HTTP/1.1\r\nHost: a\r\n\r\n"
        "POST /p HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nhi"
        "GET /c HTTP/1.1\r\nHost: a\r\n\r\n"
        "GET /ws HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"
        "GET /after HTTP/1.1\r\nHost: a\r\n\r\n";
    // The HEAD's Content-Length and the 304's describe a body not sent; were either taken
    // as a body, the next responses would be eaten and the refusal of /ws never seen.
    const std::string responses =
        "HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n"
        "HTTP/1.1 204 No Content\r\nContent-Length: 10\r\n\r\n"
        "HTTP/1.1 100 Continue\r\n\r\n"
        "HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n"
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
        "HTTP/1.1 304 Not Modified\r\nContent-Length: 1000\r\n\r\n";
    const std::string refusal = "HTTP/1.1 426 Upgrade Required\r\nContent-Length: 4\r\n\r\nnope";
    for (std::size_t piece : {std::size_t{4096}, std::size_t{1}, std::size_t{7}}) {
        INFO("fed " << piece << " bytes at a time");
        proxy::detail::HostRewriter r("api.example.com");
        Fed fed;
        client_says(r, requests, piece, fed);
        REQUIRE(fed.ok);
        CHECK(r.waiting());
        CHECK(fed.up.find("/after") == std::string::npos);
        CHECK_FALSE(endpoint_says(r, responses, piece, fed));
        CHECK(r.waiting());
        CHECK(endpoint_says(r, refusal, piece, fed));
        CHECK_FALSE(r.switched());
        CHECK(fed.up.ends_with("GET /after HTTP/1.1\r\nHost: api.example.com\r\n\r\n"));
        CHECK(count(fed.up, "Host: api.example.com") == 6);
    }
}

TEST_CASE("CONNECT switches on a 2xx and not on a refusal; a refusal that comes early is not waited for")
{
    const std::string connect = "CONNECT db.internal:5432 HTTP/1.1\r\nHost: db.internal:5432\r\n\r\n";
    const std::string after("\x00\x00\x00\x08\x04\xd2\x16\x2f", 8);
    {
        proxy::detail::HostRewriter r("api.example.com");
        Fed fed;
        client_says(r, connect + after, 1, fed);
        REQUIRE(fed.ok);
        CHECK(fed.up == "CONNECT db.internal:5432 HTTP/1.1\r\nHost: api.example.com\r\n\r\n");
        fed.up.clear();
        CHECK(endpoint_says(r, "HTTP/1.1 200 Connection Established\r\n\r\nN", 1, fed));
        CHECK(r.switched());
        CHECK(fed.up == after);
    }
    {
        proxy::detail::HostRewriter r("api.example.com");
        Fed fed;
        client_says(r, connect + "GET / HTTP/1.1\r\n\r\n", 4096, fed);
        CHECK(endpoint_says(r, "HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n", 4096, fed));
        CHECK_FALSE(r.switched());
        CHECK(fed.up.ends_with("GET / HTTP/1.1\r\nHost: api.example.com\r\n\r\n"));
    }
    {
        // An upgrade with a body, refused before its body is in: nothing after it is held.
        proxy::detail::HostRewriter r("api.example.com");
        Fed fed;
        client_says(r, "POST /u HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: h2c\r\nContent-Length: 4\r\n\r\nab", 4096, fed);
        CHECK_FALSE(endpoint_says(r, "HTTP/1.1 413 Too Large\r\nContent-Length: 0\r\n\r\n", 4096, fed));
        client_says(r, "cdGET /n HTTP/1.1\r\n\r\n", 4096, fed);
        CHECK_FALSE(r.waiting());
        CHECK(fed.up.ends_with("abcdGET /n HTTP/1.1\r\nHost: api.example.com\r\n\r\n"));
    }
}

TEST_CASE("an endpoint that does not answer in HTTP: the connection passes untouched from the next request")
{
    proxy::detail::HostRewriter r("api.example.com");
    Fed fed;
    client_says(r, h2c_request + "\x01\x02 anything", 4096, fed);
    CHECK(endpoint_says(r, "SSH-2.0-OpenSSH_9.2\r\n", 4096, fed));
    CHECK(fed.ok);
    CHECK(r.switched());
    CHECK(fed.up == h2c_rewritten + "\x01\x02 anything");
}

TEST_CASE("the answers for a request that reaches no endpoint")
{
    using proxy::detail::Unreachable;
    auto refused = proxy::detail::failure_response(Unreachable::connect_failed);
    CHECK(refused == "HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain\r\nContent-Length: " +
                         std::to_string(refused_body.size()) + "\r\nConnection: close\r\n\r\n" + refused_body);
    CHECK(proxy::detail::failure_response(Unreachable::no_healthy) ==
          "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 19\r\nConnection: close\r\n\r\n"
          "no healthy upstream");
    CHECK(proxy::detail::failure_response(Unreachable::connect_timeout).starts_with("HTTP/1.1 502 "));
    CHECK(proxy::detail::failure_response(Unreachable::tls_handshake).starts_with("HTTP/1.1 502 "));
    CHECK(proxy::detail::failure_response(Unreachable::overflow).ends_with("reset reason: overflow"));
    CHECK(proxy::detail::failure_response(Unreachable::tls_unusable).starts_with("HTTP/1.1 503 "));
    CHECK(proxy::detail::failure_response(Unreachable::local).starts_with("HTTP/1.1 503 "));
}

// ---- Through mesd --------------------------------------------------------------------------

TEST_CASE("through mesd: after a declined h2c upgrade every request on the connection is rewritten")
{
    Dir work;
    Backend backend(work);
    Setup s(mes("web", 8180, "[" + ep("web.ext.test", backend.port) + "]"));
    auto web = s.vip("web");
    REQUIRE_FALSE(web.empty());

    // curl offers h2c on an http:// URL (Upgrade: h2c); the backend answers in HTTP/1.1, and
    // curl sends the second request on the same connection.
    auto r = run({curl, "-sS", "--max-time", "5", "--http2", "http://" + web + ":8180/one", "http://" + web + ":8180/two"});
    INFO(r.err);
    auto conn = conn_of(r.out);  // the backend's count of connections (its readiness probe was one)
    REQUIRE(conn > 0);
    CHECK(r.out == "host=web.ext.test path=/one conn=" + std::to_string(conn) + " len=0\nhost=web.ext.test path=/two conn=" +
                       std::to_string(conn) + " len=0\n");

    // A raw client pipelines a request right behind its h2c offer: held until the 200, then
    // rewritten; the next one too.
    Client c(web, 8180);
    auto same = " conn=" + std::to_string(conn + 1) + " ";
    c.send(h2c_request + "GET /pipelined HTTP/1.1\r\nHost: " + web + "\r\n\r\n");
    CHECK(c.read_contains("host=web.ext.test path=/pipelined" + same));
    c.send("GET /later HTTP/1.1\r\nHost: " + web + ":8180\r\n\r\n");
    CHECK(c.read_contains("host=web.ext.test path=/later" + same));
    CHECK(count(c.got, "host=web.ext.test path=/one" + same) == 1);
    CHECK(count(c.got, "HTTP/1.1 200 OK") == 3);
}

TEST_CASE("through mesd: a WebSocket answered 101 passes raw both ways from there")
{
    Dir work;
    Backend backend(work);
    Setup s(mes("web", 8180, "[" + ep("web.ext.test", backend.port) + "]"));
    auto web = s.vip("web");
    REQUIRE_FALSE(web.empty());

    Client c(web, 8180);
    // Sent before the answer: a frame and something that looks like a request; after the
    // 101 both are the new protocol and reach the backend as they are.
    const std::string early = std::string("\x81\x85\x00\x00\x00\x00hello", 11) + "GET /x HTTP/1.1\r\nHost: keep.me\r\n\r\n";
    c.send("GET /ws HTTP/1.1\r\nHost: " + web + "\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
           "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n" +
           early);
    const std::string head = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n<raw>";
    CHECK(c.read_until([&](const std::string& g) { return g.size() >= head.size() + early.size(); }));
    CHECK(c.got == head + early);
    // After it, bytes that are not HTTP, and a request line that must not be touched.
    c.got.clear();
    const std::string later = std::string("\x00\xff\r\n\r\n not HTTP \x01", 17) + "POST / HTTP/1.1\r\nHost: raw\r\n\r\n";
    c.send(later);
    CHECK(c.read_until([&](const std::string& g) { return g.size() >= later.size(); }));
    CHECK(c.got == later);
}

TEST_CASE("through mesd: what follows a refused upgrade is held up to a bound, then rewritten")
{
    Dir work;
    Backend backend(work);
    Setup s(mes("web", 8180, "[" + ep("web.ext.test", backend.port) + "]"));
    auto web = s.vip("web");
    REQUIRE_FALSE(web.empty());

    // The backend takes half a second to decline; meanwhile the client sends a request with
    // a body several times the hold bound (mesd stops reading it), and ends its side.
    const std::string body(300 * 1024, 'b');
    Client c(web, 8180);
    std::string data = "GET /slow HTTP/1.1\r\nHost: " + web + "\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n" +
                       "POST /upload HTTP/1.1\r\nHost: " + web + "\r\nContent-Length: " + std::to_string(body.size()) +
                       "\r\n\r\n" + body;
    std::jthread sender([&] {
        (void)!::send(c.fd, data.data(), data.size(), MSG_NOSIGNAL);
        ::shutdown(c.fd, SHUT_WR);
    });
    c.read_to_end(10s);
    sender.join();
    CHECK(c.closed);
    CHECK(c.error == 0);
    CHECK(count(c.got, "HTTP/1.1 200 OK") == 2);
    INFO(c.got.substr(0, 1000));
    auto conn = conn_of(c.got);
    CHECK(c.got.find("host=web.ext.test path=/slow conn=" + std::to_string(conn) + " len=0\n") != std::string::npos);
    CHECK(c.got.find("host=web.ext.test path=/upload conn=" + std::to_string(conn) + " len=307200\n") != std::string::npos);
}

TEST_CASE("through mesd: protocol http answers 502 when every endpoint refuses, even to a client that sends nothing")
{
    int dead1 = free_tcp_port(), dead2 = free_tcp_port();
    Setup s(mes("dead", 8190, "[" + ep("127.0.0.1", dead1) + ", " + ep("127.0.0.1", dead2) + "]") +
            mes("deadname", 8191, "[" + ep("web.ext.test", dead1) + "]") +
            mes("deadtcp", 8192, "[" + ep("127.0.0.1", dead1) + "]", "tcp"));
    auto dead = s.vip("dead");
    REQUIRE_FALSE(dead.empty());

    auto r = run({curl, "-sS", "-i", "--max-time", "5", "http://" + dead + ":8190/x"});
    INFO(r.err);
    CHECK(r.exit_code == 0);
    CHECK(r.out.starts_with("HTTP/1.1 502 Bad Gateway\r\n"));
    CHECK(r.out.find("\r\nContent-Type: text/plain\r\n") != std::string::npos);
    CHECK(r.out.find("\r\nContent-Length: " + std::to_string(refused_body.size()) + "\r\n") != std::string::npos);
    CHECK(r.out.find("\r\nConnection: close\r\n") != std::string::npos);
    CHECK(body_of(r.out) == refused_body);

    // A DNS-named endpoint alike; a POST with a body gets the answer too.
    r = run({curl, "-sS", "--max-time", "5", "-d", std::string(100000, 'p'), "-w", " %{http_code}",
             "http://" + s.vip("deadname") + ":8191/post"});
    CHECK(r.out == refused_body + " 502");

    // A client that sends nothing is answered all the same, and the socket then ends with a
    // FIN (no reset).
    {
        auto start = std::chrono::steady_clock::now();
        Client c(dead, 8190);
        c.read_to_end(5s);
        CHECK(c.closed);
        CHECK(c.error == 0);
        CHECK(c.got.starts_with("HTTP/1.1 502 Bad Gateway\r\n"));
        CHECK(std::chrono::steady_clock::now() - start < 1500ms);
    }

    // The access log keeps the reason.
    auto lines = s.log_lines("dead", 2);
    auto named = s.log_lines("deadname", 1);
    lines.insert(lines.end(), named.begin(), named.end());
    INFO(file_text(s.access_log));
    REQUIRE(lines.size() == 3);
    for (const auto& line : lines) CHECK(line.ends_with(" reason=connect_failed"));

    // protocol tcp: still a reset, at once.
    Client t(s.vip("deadtcp"), 8192);
    t.read_to_end(5s);
    CHECK(t.got.empty());
    CHECK(t.error == ECONNRESET);
}

TEST_CASE("through mesd: a connect that times out is a 502 that says so")
{
    // A listener whose backlog is full never completes a handshake: connects to it hang.
    int hole = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    ::inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
    REQUIRE(::bind(hole, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
    REQUIRE(::listen(hole, 0) == 0);
    socklen_t len = sizeof addr;
    ::getsockname(hole, reinterpret_cast<sockaddr*>(&addr), &len);
    std::vector<int> fillers;
    for (int i = 0; i < 8; ++i) {
        int fd = ::socket(AF_INET, SOCK_STREAM, 0);
        ::fcntl(fd, F_SETFL, O_NONBLOCK);
        (void)!::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
        fillers.push_back(fd);
    }
    {
        Setup s(mes("slow", 8193, "[" + ep("127.0.0.1", ntohs(addr.sin_port)) + "]"),
                "  connectTimeout: 300ms\n  connectAttempts: 1\n");
        auto r = run({curl, "-sS", "--max-time", "5", "-w", " %{http_code}", "http://" + s.vip("slow") + ":8193/"});
        CHECK(r.out == "upstream connect error or disconnect/reset before headers. reset reason: connection timeout 502");
    }
    for (int fd : fillers) ::close(fd);
    ::close(hole);
}

TEST_CASE("through mesd: over maxConnectionsPerService and with TLS unusable protocol http answers 503")
{
    Dir work;
    Backend backend(work);
    // An endpoint that does not speak TLS, for an MES that originates it.
    int plain = free_tcp_port();
    Child not_tls({socat, "TCP-LISTEN:" + std::to_string(plain) + ",bind=127.0.0.1,fork,reuseaddr", "SYSTEM:'echo not tls'"});
    REQUIRE(eventually([&] { return accepting("127.0.0.1", plain); }));
    Setup s(mes("web", 8180, "[" + ep("web.ext.test", backend.port) + "]") +
                mes("badtls", 8194, "[" + ep("127.0.0.1", backend.port) + "]", "http",
                    "  tls:\n    enabled: true\n    verification:\n      caCert: {inlineString: \"not a certificate\"}\n") +
                mes("plain", 8195, "[" + ep("127.0.0.1", plain) + "]", "http",
                    "  tls:\n    enabled: true\n    verification:\n      mode: SkipAll\n"),
            "  maxConnectionsPerService: 1\n");
    auto web = s.vip("web");
    REQUIRE_FALSE(web.empty());

    // One connection holds the MES's only place.
    Client held(web, 8180);
    held.send("GET /first HTTP/1.1\r\nHost: a\r\n\r\n");
    REQUIRE(held.read_contains("path=/first"));
    auto r = run({curl, "-sS", "-i", "--max-time", "5", "http://" + web + ":8180/second"});
    CHECK(r.out.starts_with("HTTP/1.1 503 Service Unavailable\r\n"));
    CHECK(body_of(r.out) == "upstream connect error or disconnect/reset before headers. reset reason: overflow");
    // A refused client that keeps its connection open is let go within 100 ms of its answer,
    // not the second other answers linger: it holds a place under the global limit meanwhile.
    {
        Client over(web, 8180);
        over.send("GET /third HTTP/1.1\r\nHost: a\r\n\r\n");
        REQUIRE(over.read_contains("reset reason: overflow"));
        auto answered = std::chrono::steady_clock::now();
        over.read_to_end(3s);
        CHECK(over.closed);
        CHECK(std::chrono::steady_clock::now() - answered < 600ms);
    }

    // TLS settings that cannot be used: refused, never carried in the clear.
    r = run({curl, "-sS", "-i", "--max-time", "5", "http://" + s.vip("badtls") + ":8194/"});
    CHECK(r.out.starts_with("HTTP/1.1 503 Service Unavailable\r\n"));
    CHECK(body_of(r.out) ==
          "upstream connect error or disconnect/reset before headers. reset reason: connection failure, transport failure "
          "reason: TLS settings unusable");

    // A TLS handshake that fails is the endpoint's fault: 502.
    r = run({curl, "-sS", "-i", "--max-time", "5", "http://" + s.vip("plain") + ":8195/"});
    CHECK(r.out.starts_with("HTTP/1.1 502 Bad Gateway\r\n"));
    CHECK(body_of(r.out) ==
          "upstream connect error or disconnect/reset before headers. reset reason: connection failure, transport failure "
          "reason: TLS handshake failed");

    auto reasons = [&](const std::string& name) {
        auto lines = s.log_lines(name, 1);
        return lines.empty() ? std::string() : lines.back();
    };
    CHECK(reasons("badtls").find(" reason=tls_failed") != std::string::npos);
    CHECK(reasons("plain").find(" reason=tls_failed") != std::string::npos);
    auto web_lines = s.log_lines("web", 1);
    REQUIRE_FALSE(web_lines.empty());
    CHECK(web_lines[0].find(" reason=refused_limit") != std::string::npos);
}
