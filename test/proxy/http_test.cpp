// The Host rewrite of protocol: http, fed the way the network delivers: whole, and a byte
// at a time.
#include "proxy/detail/http.hpp"

#include <catch2/catch.hpp>

#include <string>

namespace {

bool through(const std::string& input, std::size_t piece, std::string* result)
{
    proxy::detail::HostRewriter rewriter("api.example.com");
    bool fine = true;
    for (std::size_t at = 0; at < input.size() && fine; at += piece)
        fine = rewriter.feed(input.data() + at, std::min(piece, input.size() - at), *result);
    return fine;
}

std::string through(const std::string& input, std::size_t piece, bool* ok = nullptr)
{
    proxy::detail::HostRewriter rewriter("api.example.com");
    std::string out;
    bool fine = true;
    for (std::size_t at = 0; at < input.size() && fine; at += piece)
        fine = rewriter.feed(input.data() + at, std::min(piece, input.size() - at), out);
    if (ok) *ok = fine;
    return out;
}

}  // namespace

TEST_CASE("Host is rewritten in every request; bodies, chunks and pipelining pass byte for byte")
{
    const std::string input =
        "GET /a HTTP/1.1\r\nHost: 127.242.0.1:80\r\nAccept: */*\r\n\r\n"
        "POST /b?x=1 HTTP/1.1\r\nhost: web.mesh\r\nContent-Length: 11\r\n\r\nhello world"
        "PUT /c HTTP/1.1\r\nHost: web.mesh\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n"
        "5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nTrailer: yes\r\n\r\n"
        "GET /d HTTP/1.0\r\n\r\n";
    const std::string expected =
        "GET /a HTTP/1.1\r\nHost: api.example.com\r\nAccept: */*\r\n\r\n"
        "POST /b?x=1 HTTP/1.1\r\nhost: api.example.com\r\nContent-Length: 11\r\n\r\nhello world"
        "PUT /c HTTP/1.1\r\nHost: api.example.com\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n"
        "5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nTrailer: yes\r\n\r\n"
        "GET /d HTTP/1.0\r\nHost: api.example.com\r\n\r\n";
    for (std::size_t piece : {input.size(), std::size_t{1}, std::size_t{2}, std::size_t{7}, std::size_t{64}}) {
        INFO("fed " << piece << " bytes at a time");
        bool ok = false;
        CHECK(through(input, piece, &ok) == expected);
        CHECK(ok);
    }
}

TEST_CASE("after an Upgrade the endpoint accepts the stream passes untouched; a duplicate Host is dropped")
{
    const std::string request = "GET /ws HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n";
    const std::string after = "\x81\x05hello GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    for (std::size_t piece : {request.size() + after.size(), std::size_t{3}}) {
        INFO("fed " << piece << " bytes at a time");
        std::string out;
        auto ok = through(request + after, piece, &out);
        CHECK(ok);
        // What follows the request waits for the endpoint's answer.
        CHECK(out == "GET /ws HTTP/1.1\r\nHost: api.example.com\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n");
    }
    proxy::detail::HostRewriter rewriter("api.example.com");
    std::string out;
    REQUIRE(rewriter.feed((request + after).data(), request.size() + after.size(), out));
    out.clear();
    const std::string answer = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";
    CHECK(rewriter.watch(answer.data(), answer.size()));
    REQUIRE(rewriter.release(out));
    CHECK(out == after);
}

TEST_CASE("what is not HTTP is refused, and so is a head too large")
{
    bool ok = true;
    through("\x16\x03\x01\x02\x00 this is TLS, not HTTP", 5, &ok);
    CHECK_FALSE(ok);
    through("GET / HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n", 1000, &ok);
    CHECK_FALSE(ok);
    through("GET / HTTP/1.1\r\nX-Big: " + std::string(70000, 'a') + "\r\n\r\n", 4096, &ok);
    CHECK_FALSE(ok);
    CHECK(proxy::detail::HostRewriter::bad_request().starts_with("HTTP/1.1 400 Bad Request\r\n"));
}
