// The admin endpoint as an HTTP/1.1 server (cmd::Admin on a loop of its own): requests read
// by http_parser into method, path, query and headers; persistent connections with pipelined
// requests answered in order; HEAD; 405 with Allow; 400, 414 and 431; the request limit per
// connection; eviction of idle connections; and a stop that does not wait for idle ones.
#include "cmd/admin.hpp"
#include "test/support/net.hpp"
#include "test/support/text.hpp"

#include <catch2/catch.hpp>

#include <uv.h>

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

using namespace test_support;
using namespace std::chrono_literals;

namespace {

// An Admin on a loop run by a thread of its own; the handler runs there.
class Server {
public:
    explicit Server(cmd::Admin::Handler handler)
    {
        uv_loop_init(&loop_);
        admin_ = std::make_unique<cmd::Admin>(&loop_, std::move(handler));
        auto at = admin_->start(conf::HostPort{"127.0.0.1", 0});
        REQUIRE(at);
        port_ = std::stoi(at->substr(at->rfind(':') + 1));
        stop_.data = this;
        uv_async_init(&loop_, &stop_, [](uv_async_t* a) {
            auto* s = static_cast<Server*>(a->data);
            s->admin_->stop([s] { uv_close(reinterpret_cast<uv_handle_t*>(&s->stop_), nullptr); });
        });
        thread_ = std::thread([this] { uv_run(&loop_, UV_RUN_DEFAULT); });
    }
    ~Server()
    {
        stop();
        uv_loop_close(&loop_);
    }
    // Stops the endpoint and waits for its loop to end.
    void stop()
    {
        if (!thread_.joinable()) return;
        uv_async_send(&stop_);
        thread_.join();
    }
    int port() const { return port_; }

private:
    uv_loop_t loop_{};
    uv_async_t stop_{};
    std::unique_ptr<cmd::Admin> admin_;
    std::thread thread_;
    int port_ = 0;
};

struct Seen {
    std::mutex mutex;
    std::vector<cmd::HttpRequest> requests;
};

// Answers every path with what it was asked: method, path, query, `page`, Host, Accept.
cmd::Admin::Handler echo(Seen& seen)
{
    return [&seen](const cmd::HttpRequest& r) {
        {
            std::lock_guard lock(seen.mutex);
            seen.requests.push_back(r);
        }
        if (r.path == "/missing") return cmd::HttpReply{404, "text/plain", "no\n", {}};
        std::string body = r.method + " " + r.path + " q=" + r.query + " page=" + r.param("page").value_or("-") +
                           " host=" + r.header("host").value_or("-") + " accept=" + r.header("accept").value_or("-") + "\n";
        return cmd::HttpReply{200, "text/plain", body, {{"X-Test", "yes"}}};
    };
}

// Reads until `count` whole replies (by Content-Length) are in, EOF, or `wait` without data
// (count 0: until one of the latter; a reply to HEAD has no body to count).
struct Read {
    std::string data;
    bool eof = false;
};
Read read_replies(int fd, std::size_t count, std::chrono::milliseconds wait = 3s)
{
    Read r;
    auto replies_in = [&] {
        std::size_t n = 0, at = 0;
        while (true) {
            auto head_end = r.data.find("\r\n\r\n", at);
            if (head_end == std::string::npos) return n;
            auto cl = r.data.find("Content-Length: ", at);
            std::size_t length = cl != std::string::npos && cl < head_end ? std::stoul(r.data.substr(cl + 16)) : 0;
            if (r.data.size() < head_end + 4 + length) return n;
            ++n;
            at = head_end + 4 + length;
        }
    };
    char buf[65536];
    while (count == 0 || replies_in() < count) {
        pollfd p{fd, POLLIN, 0};
        if (::poll(&p, 1, static_cast<int>(wait.count())) != 1) break;
        auto n = ::recv(fd, buf, sizeof buf, 0);
        if (n <= 0) {
            r.eof = true;
            break;
        }
        r.data.append(buf, static_cast<std::size_t>(n));
    }
    return r;
}

// True once the peer has closed `fd` (EOF or reset) within `wait`.
bool closed_by_peer(int fd, std::chrono::milliseconds wait)
{
    auto until = std::chrono::steady_clock::now() + wait;
    char buf[4096];
    while (std::chrono::steady_clock::now() < until) {
        pollfd p{fd, POLLIN, 0};
        if (::poll(&p, 1, 100) == 1) {
            auto n = ::recv(fd, buf, sizeof buf, 0);
            if (n <= 0) return true;
        }
    }
    return false;
}

void send_all(int fd, const std::string& text) { REQUIRE(::send(fd, text.data(), text.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(text.size())); }

}  // namespace

TEST_CASE("admin http: a request is read into method path query and headers")
{
    Seen seen;
    Server server(echo(seen));
    int fd = connect_to("127.0.0.1", server.port());
    REQUIRE(fd >= 0);
    send_all(fd, "GET /status.json?page=2&x=a%20b HTTP/1.1\r\nHost: example.test:9901\r\nAccept:  text/html \r\n"
                 "X-Folded: one\r\nConnection: close\r\n\r\n");
    auto r = read_replies(fd, 1);
    ::close(fd);
    CHECK_THAT(r.data, Catch::StartsWith("HTTP/1.1 200 OK\r\n"));
    CHECK_THAT(r.data, Catch::Contains("\r\nX-Test: yes\r\n"));
    CHECK_THAT(r.data, Catch::Contains("\r\nConnection: close\r\n"));
    CHECK_THAT(r.data, Catch::EndsWith("\r\n\r\nGET /status.json q=page=2&x=a%20b page=2 host=example.test:9901 accept=text/html\n"));
    std::lock_guard lock(seen.mutex);
    REQUIRE(seen.requests.size() == 1);
    const auto& req = seen.requests.front();
    CHECK(req.param("x") == "a b");
    CHECK_FALSE(req.param("y"));
    CHECK(req.header("x-folded") == "one");
    CHECK(req.headers.size() == 4);
}

TEST_CASE("admin http: one connection carries several requests and pipelined ones are answered in order")
{
    Seen seen;
    Server server(echo(seen));
    int fd = connect_to("127.0.0.1", server.port());
    REQUIRE(fd >= 0);
    send_all(fd, "GET /one HTTP/1.1\r\nHost: a\r\n\r\n");
    auto first = read_replies(fd, 1);
    CHECK_FALSE(first.eof);
    CHECK_THAT(first.data, Catch::Contains("\r\nConnection: keep-alive\r\n"));
    CHECK_THAT(first.data, Catch::EndsWith("GET /one q= page=- host=a accept=-\n"));

    // Three at once, the second a HEAD, in one write: three replies, in the order asked.
    send_all(fd, "GET /two HTTP/1.1\r\nHost: a\r\n\r\nHEAD /three HTTP/1.1\r\nHost: a\r\n\r\nGET /four?page=4 HTTP/1.1\r\nHost: a\r\n\r\n");
    auto three = read_replies(fd, 0, 500ms);
    CHECK_FALSE(three.eof);
    auto two = three.data.find("GET /two q=");
    auto four = three.data.find("GET /four q=page=4 page=4");
    REQUIRE(two != std::string::npos);
    REQUIRE(four != std::string::npos);
    CHECK(two < four);
    CHECK(occurrences(three.data, "HTTP/1.1 200 OK\r\n") == 3);
    // HEAD: the length of the body a GET gets, and no body.
    CHECK(three.data.find("HEAD /three") == std::string::npos);
    CHECK(occurrences(three.data, "Content-Length: " + std::to_string(std::string("HEAD /three q= page=- host=a accept=-\n").size())) == 1);
    {
        std::lock_guard lock(seen.mutex);
        REQUIRE(seen.requests.size() == 4);
        CHECK(seen.requests[2].method == "HEAD");
        CHECK(seen.requests[2].path == "/three");
    }
    // A request split over writes is put together.
    send_all(fd, "GET /fi");
    std::this_thread::sleep_for(50ms);
    send_all(fd, "ve HTTP/1.1\r\nHo");
    std::this_thread::sleep_for(50ms);
    send_all(fd, "st: a\r\n\r\n");
    auto five = read_replies(fd, 1);
    CHECK_THAT(five.data, Catch::EndsWith("GET /five q= page=- host=a accept=-\n"));
    ::close(fd);
}

TEST_CASE("admin http: HTTP/1.0 and Connection close end the connection after the reply")
{
    Seen seen;
    Server server(echo(seen));
    for (std::string request : {"GET /a HTTP/1.0\r\n\r\n", "GET /a HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"}) {
        int fd = connect_to("127.0.0.1", server.port());
        REQUIRE(fd >= 0);
        send_all(fd, request);
        auto r = read_replies(fd, 1);
        CHECK_THAT(r.data, Catch::Contains("\r\nConnection: close\r\n"));
        CHECK(closed_by_peer(fd, 2s));
        ::close(fd);
    }
    // HTTP/1.0 asking to keep the connection gets it.
    int fd = connect_to("127.0.0.1", server.port());
    send_all(fd, "GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    auto r = read_replies(fd, 1);
    CHECK_THAT(r.data, Catch::Contains("\r\nConnection: keep-alive\r\n"));
    CHECK_FALSE(closed_by_peer(fd, 300ms));
    ::close(fd);
}

TEST_CASE("admin http: 405 with Allow 404 400 414 and 431")
{
    Seen seen;
    Server server(echo(seen));
    // `closes`: the connection is expected to end, and is waited on longer.
    auto ask = [&](const std::string& request, bool closes = true) {
        int fd = connect_to("127.0.0.1", server.port());
        REQUIRE(fd >= 0);
        send_all(fd, request);
        auto r = read_replies(fd, 1);
        r.eof = closed_by_peer(fd, closes ? 2s : 300ms);
        ::close(fd);
        return r;
    };
    auto post = ask("POST /config HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc", false);
    CHECK_THAT(post.data, Catch::StartsWith("HTTP/1.1 405 Method Not Allowed\r\n"));
    CHECK_THAT(post.data, Catch::Contains("\r\nAllow: GET, HEAD\r\n"));
    CHECK_FALSE(post.eof);  // a refused method is still a well-formed request: the connection stays
    CHECK_THAT(ask("DELETE / HTTP/1.1\r\nHost: a\r\n\r\n", false).data, Catch::StartsWith("HTTP/1.1 405 "));
    CHECK_THAT(ask("GET /missing HTTP/1.1\r\nHost: a\r\n\r\n", false).data, Catch::StartsWith("HTTP/1.1 404 Not Found\r\n"));

    auto garbage = ask("HELLO\r\n\r\n");
    CHECK_THAT(garbage.data, Catch::StartsWith("HTTP/1.1 400 Bad Request\r\n"));
    CHECK(garbage.eof);
    CHECK_THAT(ask("GET / HTTP/1.1\r\nBad Header\r\n\r\n").data, Catch::StartsWith("HTTP/1.1 400 "));
    CHECK_THAT(ask("GET * HTTP/1.1\r\nHost: a\r\n\r\n").data, Catch::StartsWith("HTTP/1.1 400 "));

    auto long_url = ask("GET /" + std::string(cmd::Admin::max_url_bytes + 10, 'a') + " HTTP/1.1\r\nHost: a\r\n\r\n");
    CHECK_THAT(long_url.data, Catch::StartsWith("HTTP/1.1 414 URI Too Long\r\n"));
    CHECK(long_url.eof);
    auto big_headers = ask("GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + std::string(cmd::Admin::max_header_bytes + 10, 'b') + "\r\n\r\n");
    CHECK_THAT(big_headers.data, Catch::StartsWith("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
    CHECK(big_headers.eof);
    std::string many;
    for (int i = 0; i < 1000; ++i) many += "X-" + std::to_string(i) + ": v\r\n";
    CHECK_THAT(ask("GET / HTTP/1.1\r\nHost: a\r\n" + many + "\r\n").data, Catch::StartsWith("HTTP/1.1 431 "));

    // Nothing malformed reached the handler.
    std::lock_guard lock(seen.mutex);
    for (const auto& r : seen.requests) CHECK(r.path == "/missing");
}

TEST_CASE("admin http: a connection answers at most its request limit then closes")
{
    Seen seen;
    Server server(echo(seen));
    int fd = connect_to("127.0.0.1", server.port());
    REQUIRE(fd >= 0);
    std::string burst;
    for (std::size_t i = 0; i < cmd::Admin::max_requests_per_connection + 5; ++i) burst += "GET /n HTTP/1.1\r\nHost: a\r\n\r\n";
    send_all(fd, burst);
    auto r = read_replies(fd, cmd::Admin::max_requests_per_connection + 5, 2s);
    ::close(fd);
    CHECK(r.eof);
    CHECK(occurrences(r.data, "HTTP/1.1 200 OK\r\n") == cmd::Admin::max_requests_per_connection);
    CHECK(occurrences(r.data, "Connection: close\r\n") == 1);
}

TEST_CASE("admin http: idle kept-alive connections are evicted for newcomers and closed at stop")
{
    Seen seen;
    Server server(echo(seen));
    // The first connection asks once and stays open, idle; max_connections more come after it.
    int first = connect_to("127.0.0.1", server.port());
    REQUIRE(first >= 0);
    send_all(first, "GET /a HTTP/1.1\r\nHost: a\r\n\r\n");
    REQUIRE_THAT(read_replies(first, 1).data, Catch::StartsWith("HTTP/1.1 200"));
    std::vector<int> others;
    for (std::size_t i = 0; i < cmd::Admin::max_connections; ++i) {
        int fd = connect_to("127.0.0.1", server.port());
        REQUIRE(fd >= 0);
        others.push_back(fd);
    }
    CHECK(closed_by_peer(first, 2s));  // the oldest idle one made room
    ::close(first);
    // The newest still answers.
    send_all(others.back(), "GET /b HTTP/1.1\r\nHost: a\r\n\r\n");
    CHECK_THAT(read_replies(others.back(), 1).data, Catch::StartsWith("HTTP/1.1 200"));

    // Stopping does not wait for the idle connections' timeouts.
    auto start = std::chrono::steady_clock::now();
    server.stop();
    CHECK(std::chrono::steady_clock::now() - start < 2s);
    for (int fd : others) {
        CHECK(closed_by_peer(fd, 1s));
        ::close(fd);
    }
}

TEST_CASE("admin http: html_escape leaves no markup")
{
    CHECK(cmd::html_escape("<script>alert('x')</script> & \"q\"") ==
          "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;");
    CHECK(cmd::html_escape("plain.mesh") == "plain.mesh");
}
