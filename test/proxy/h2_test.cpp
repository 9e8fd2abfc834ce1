// The HTTP/2 :authority rewrite of protocol: http2 and grpc. Unit tests: a client's frames,
// header blocks encoded with nghttp2's HPACK deflater, fed to the rewriter in small pieces;
// what comes out is parsed frame by frame and its header blocks decoded with an inflater of
// the endpoint's. End to end: gRPC over TLS (ALPN h2) and h2c through the real mesd, to servers
// that report the authority they were sent.
#include "proxy/detail/h2.hpp"

#include "test/support/certs.hpp"
#include "test/support/mesd.hpp"
#include "test/support/net.hpp"
#include "test/support/text.hpp"
#include "test/support/process.hpp"
#include "test/support/tempdir.hpp"

#include <nghttp2/nghttp2.h>

#include <catch2/catch.hpp>

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <vector>

using namespace test_support;
using Dir = test_support::TempDir;
using namespace std::chrono_literals;
using proxy::detail::AuthorityRewriter;

namespace {

constexpr std::uint8_t DATA = 0x0, HEADERS = 0x1, PRIORITY = 0x2, RST_STREAM = 0x3, SETTINGS = 0x4, PUSH_PROMISE = 0x5,
                       PING = 0x6, GOAWAY = 0x7, WINDOW_UPDATE = 0x8, CONTINUATION = 0x9;
constexpr std::uint8_t END_STREAM = 0x1, ACK = 0x1, END_HEADERS = 0x4, PADDED = 0x8, PRIORITY_FLAG = 0x20;

const std::string preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

struct Header {
    std::string name, value;
    bool never_indexed = false;
    bool operator==(const Header&) const = default;
};
using Headers = std::vector<Header>;

std::ostream& operator<<(std::ostream& os, const Header& h)
{
    return os << h.name << ": " << h.value << (h.never_indexed ? " (never indexed)" : "");
}

std::string frame(std::uint8_t type, std::uint8_t flags, std::uint32_t stream, const std::string& payload)
{
    std::string f;
    std::size_t n = payload.size();
    for (int shift : {16, 8, 0}) f += static_cast<char>((n >> shift) & 0xff);
    f += static_cast<char>(type);
    f += static_cast<char>(flags);
    for (int shift : {24, 16, 8, 0}) f += static_cast<char>((stream >> shift) & 0xff);
    return f + payload;
}

struct Deflater {
    nghttp2_hd_deflater* d = nullptr;
    explicit Deflater(std::size_t table = 4096) { REQUIRE(nghttp2_hd_deflate_new(&d, table) == 0); }
    ~Deflater() { nghttp2_hd_deflate_del(d); }
    std::string encode(const Headers& headers)
    {
        std::vector<nghttp2_nv> nva;
        for (const auto& h : headers)
            nva.push_back({reinterpret_cast<std::uint8_t*>(const_cast<char*>(h.name.data())),
                           reinterpret_cast<std::uint8_t*>(const_cast<char*>(h.value.data())), h.name.size(), h.value.size(),
                           static_cast<std::uint8_t>(h.never_indexed ? NGHTTP2_NV_FLAG_NO_INDEX : NGHTTP2_NV_FLAG_NONE)});
        std::string out(nghttp2_hd_deflate_bound(d, nva.data(), nva.size()), '\0');
        auto n = nghttp2_hd_deflate_hd(d, reinterpret_cast<std::uint8_t*>(out.data()), out.size(), nva.data(), nva.size());
        REQUIRE(n >= 0);
        out.resize(static_cast<std::size_t>(n));
        return out;
    }
};

struct Inflater {
    nghttp2_hd_inflater* i = nullptr;
    Inflater() { REQUIRE(nghttp2_hd_inflate_new(&i) == 0); }
    ~Inflater() { nghttp2_hd_inflate_del(i); }
    // False when the block does not decode.
    bool decode(const std::string& block, Headers& out)
    {
        auto* in = reinterpret_cast<const std::uint8_t*>(block.data());
        std::size_t left = block.size();
        while (true) {
            nghttp2_nv nv{};
            int flags = 0;
            auto n = nghttp2_hd_inflate_hd2(i, &nv, &flags, in, left, 1);
            if (n < 0) return false;
            in += n;
            left -= static_cast<std::size_t>(n);
            if (flags & NGHTTP2_HD_INFLATE_EMIT)
                out.push_back({std::string(reinterpret_cast<char*>(nv.name), nv.namelen),
                               std::string(reinterpret_cast<char*>(nv.value), nv.valuelen), (nv.flags & NGHTTP2_NV_FLAG_NO_INDEX) != 0});
            if (flags & NGHTTP2_HD_INFLATE_FINAL) {
                nghttp2_hd_inflate_end_headers(i);
                return true;
            }
            if (!(flags & NGHTTP2_HD_INFLATE_EMIT) && left == 0) return false;
        }
    }
};

// A client's HEADERS for `block`, split into CONTINUATION frames of `piece` bytes when asked.
std::string headers_frames(std::uint32_t stream, const std::string& block, std::uint8_t flags = END_HEADERS,
                           std::size_t piece = 0, const std::string& prefix = "", const std::string& padding = "")
{
    if (piece == 0 || block.size() <= piece) return frame(HEADERS, flags, stream, prefix + block + padding);
    std::string out = frame(HEADERS, static_cast<std::uint8_t>(flags & ~END_HEADERS), stream, prefix + block.substr(0, piece) + padding);
    for (std::size_t at = piece; at < block.size(); at += piece) {
        bool last = at + piece >= block.size();
        out += frame(CONTINUATION, last ? END_HEADERS : 0, stream, block.substr(at, piece));
    }
    return out;
}

struct Frame {
    std::uint8_t type, flags;
    std::uint32_t stream;
    std::string payload;
    std::string bytes;  // as it came, header included
};

// What the endpoint gets: the preface, then frames, none above 16384 bytes.
std::vector<Frame> frames_of(const std::string& out)
{
    REQUIRE(out.substr(0, preface.size()) == preface);
    std::vector<Frame> frames;
    std::size_t at = preface.size();
    while (at < out.size()) {
        REQUIRE(out.size() - at >= 9);
        auto b = [&](std::size_t i) { return static_cast<std::uint8_t>(out[at + i]); };
        std::size_t length = (std::size_t{b(0)} << 16) | (std::size_t{b(1)} << 8) | b(2);
        std::uint32_t stream = (std::uint32_t{b(5)} << 24) | (std::uint32_t{b(6)} << 16) | (std::uint32_t{b(7)} << 8) | b(8);
        REQUIRE(out.size() - at - 9 >= length);
        if (b(3) == HEADERS || b(3) == CONTINUATION) CHECK(length <= 16384);
        frames.push_back({b(3), b(4), stream, out.substr(at + 9, length), out.substr(at, 9 + length)});
        at += 9 + length;
    }
    return frames;
}

struct Rewritten {
    std::vector<Frame> frames;
    bool ok = false;
};

Rewritten through(AuthorityRewriter& r, const std::string& input, std::size_t piece)
{
    std::string out;
    bool ok = true;
    for (std::size_t at = 0; at < input.size() && ok; at += piece)
        ok = r.feed(input.data() + at, std::min(piece, input.size() - at), out);
    Rewritten result;
    result.ok = ok;
    if (ok) result.frames = frames_of(out);
    return result;
}

bool refused(const std::string& input)
{
    for (std::size_t piece : {input.size(), std::size_t{1}, std::size_t{5}}) {
        AuthorityRewriter r("api.example.com");
        std::string out;
        bool ok = true;
        for (std::size_t at = 0; at < input.size() && ok; at += piece)
            ok = r.feed(input.data() + at, std::min(piece, input.size() - at), out);
        if (ok) return false;
        // Refused for good: nothing more is taken.
        if (r.feed(preface.data(), preface.size(), out)) return false;
    }
    return true;
}

// The header blocks of `frames` in order, each decoded (one inflater, as the endpoint has),
// with its HEADERS flags; the frames of a block are checked to follow each other.
struct Block {
    std::uint32_t stream;
    std::uint8_t flags;
    std::string priority;
    Headers headers;
    std::size_t frames;
};

std::vector<Block> blocks_of(const std::vector<Frame>& frames, Inflater& inflater)
{
    std::vector<Block> blocks;
    std::string block;
    bool open = false;
    for (const auto& f : frames) {
        if (open) {
            REQUIRE(f.type == CONTINUATION);
            REQUIRE(f.stream == blocks.back().stream);
            CHECK((f.flags & ~END_HEADERS) == 0);
            block += f.payload;
            ++blocks.back().frames;
        } else if (f.type == HEADERS) {
            CHECK((f.flags & PADDED) == 0);
            std::string priority = (f.flags & PRIORITY_FLAG) ? f.payload.substr(0, 5) : "";
            blocks.push_back({f.stream, f.flags, priority, {}, 1});
            block = f.payload.substr(priority.size());
        } else {
            REQUIRE(f.type != CONTINUATION);
            continue;
        }
        open = !(f.flags & END_HEADERS);
        if (!open) REQUIRE(inflater.decode(block, blocks.back().headers));
    }
    REQUIRE_FALSE(open);
    return blocks;
}

const std::vector<std::size_t> pieces = {1, 3, 9, 100, 16393, std::size_t{1} << 20};

Headers request(const std::string& authority, const std::string& path = "/mesd.test.Echo/Say")
{
    return {{":method", "POST"},           {":scheme", "http"},   {":path", path},          {":authority", authority},
            {"content-type", "application/grpc"}, {"te", "trailers"}, {"user-agent", "grpc-c/1.51"}};
}

Headers with_authority(Headers h, const std::string& authority)
{
    for (auto& f : h)
        if (f.name == ":authority" || f.name == "host") f.value = authority;
    return h;
}

}  // namespace

TEST_CASE("h2: :authority and host are rewritten; the preface and every other frame pass byte for byte")
{
    Deflater client;
    Headers get = {{":method", "GET"}, {":scheme", "https"}, {":path", "/"}, {":authority", "127.242.0.1:9620"},
                   {"accept", "*/*"}, {"host", "127.242.0.1:9620"}, {"authorization", "secret", true}};
    std::vector<std::string> others = {
        frame(SETTINGS, 0, 0, std::string("\x00\x04\x00\x01\x00\x00\x00\x03\x00\x00\x00\x64", 12)),
        frame(WINDOW_UPDATE, 0, 0, std::string("\x00\x0f\x00\x01", 4)),
        frame(SETTINGS, ACK, 0, ""),
        frame(PRIORITY, 0, 3, std::string("\x00\x00\x00\x00\x10", 5)),
        frame(DATA, PADDED | END_STREAM, 1, std::string("\x03", 1) + "hello" + std::string(3, '\0')),
        frame(PING, 0, 0, "12345678"),
        frame(0xfa, 0xff, 7, "an extension frame passes as it is"),
        frame(RST_STREAM, 0, 1, std::string("\x00\x00\x00\x08", 4)),
        frame(DATA, 0, 3, std::string(40000, 'x')),  // above 16384: the endpoint's SETTINGS allowed it
        frame(GOAWAY, 0, 0, std::string("\x00\x00\x00\x00\x00\x00\x00\x00", 8) + "bye"),
    };
    std::string input = preface + others[0] + others[1] + headers_frames(1, client.encode(get), END_HEADERS) + others[2] +
                        others[3] + others[4] + others[5] + others[6] + others[7] + others[8] + others[9];
    for (std::size_t piece : pieces) {
        INFO("fed " << piece << " bytes at a time");
        AuthorityRewriter r("api.example.com");
        auto got = through(r, input, piece);
        REQUIRE(got.ok);
        REQUIRE(got.frames.size() == others.size() + 1);
        for (std::size_t i = 0, o = 0; i < got.frames.size(); ++i) {
            if (i == 2) continue;
            CHECK(got.frames[i].bytes == others[o++]);
        }
        Inflater endpoint;
        auto blocks = blocks_of(got.frames, endpoint);
        REQUIRE(blocks.size() == 1);
        CHECK(blocks[0].stream == 1);
        CHECK(blocks[0].flags == END_HEADERS);
        CHECK(blocks[0].headers == with_authority(get, "api.example.com"));
    }
}

TEST_CASE("h2: the client's dynamic table is followed across blocks; the endpoint's table is never used")
{
    // The client indexes its headers and refers to them in later blocks; the output must
    // decode right for an endpoint whose SETTINGS_HEADER_TABLE_SIZE is 0.
    Deflater client;
    std::string input = preface + frame(SETTINGS, 0, 0, "");
    std::vector<Headers> sent;
    std::size_t first = 0;
    for (std::uint32_t i = 0; i < 6; ++i) {
        auto h = request("127.242.0.2:9621", i % 2 ? "/mesd.test.Echo/Say" : "/mesd.test.Echo/Stream");
        h.push_back({"x-call", std::to_string(i % 3)});
        if (i == 4) h.push_back({"grpc-timeout", "5S"});
        sent.push_back(h);
        std::string block = client.encode(h);
        if (i == 0) first = block.size();
        else CHECK(block.size() * 3 < first * 2);  // mostly indexed references: the test means what it says
        input += headers_frames(2 * i + 1, block) + frame(DATA, END_STREAM, 2 * i + 1, std::string(5, '\0'));
    }
    for (std::size_t piece : pieces) {
        INFO("fed " << piece << " bytes at a time");
        AuthorityRewriter r("grpc.example.com");
        auto got = through(r, input, piece);
        REQUIRE(got.ok);
        Inflater endpoint;
        REQUIRE(nghttp2_hd_inflate_change_table_size(endpoint.i, 0) == 0);
        auto blocks = blocks_of(got.frames, endpoint);
        REQUIRE(blocks.size() == sent.size());
        for (std::size_t i = 0; i < sent.size(); ++i) {
            CHECK(blocks[i].stream == 2 * i + 1);
            CHECK(blocks[i].headers == with_authority(sent[i], "grpc.example.com"));
        }
    }
}

TEST_CASE("h2: the client's encoder may grow its table to 64 KiB and no further")
{
    auto run_with = [](std::size_t table) {
        Deflater client(table);
        // The endpoint allowed `table`: the client's encoder says so in its first block.
        REQUIRE(nghttp2_hd_deflate_change_table_size(client.d, table) == 0);
        std::string input = preface;
        for (std::uint32_t i = 0; i < 3; ++i) {
            auto h = request("web:1", "/" + std::string(3000, 'p'));
            h.push_back({"x-big", std::string(1000, static_cast<char>('a' + i))});
            input += headers_frames(2 * i + 1, client.encode(h));
        }
        AuthorityRewriter r("api.example.com");
        return through(r, input, 1000);
    };
    CHECK(run_with(16384).ok);
    CHECK(run_with(AuthorityRewriter::max_dynamic_table).ok);
    CHECK_FALSE(run_with(AuthorityRewriter::max_dynamic_table + 1).ok);
}

TEST_CASE("h2: a client that makes a byte of input many kilobytes of output is refused")
{
    // One 1 KB header indexed once, then blocks that refer to it ten times: each some tens of
    // bytes in, 10 KB out. Such a stream is cut off once it has decoded 1 MiB beyond 128
    // times its input; the same requests with their header spelt out each time pass.
    Deflater client(4096);
    std::string bomb = preface;
    Headers h = request("web:1");
    for (int copy = 0; copy < 10; ++copy) h.push_back({"x-big", std::string(1000, 'b')});  // indexed once, referred to ten times
    for (std::uint32_t i = 0; i < 1000; ++i) bomb += headers_frames(2 * i + 1, client.encode(h));
    AuthorityRewriter r("api.example.com");
    std::string out;
    bool ok = true;
    for (std::size_t at = 0; at < bomb.size() && ok; at += 65536) ok = r.feed(bomb.data() + at, std::min<std::size_t>(65536, bomb.size() - at), out);
    CHECK_FALSE(ok);
    INFO("input " << bomb.size() << " bytes, output " << out.size());
    CHECK(out.size() < (std::size_t{3} << 20));  // 1000 blocks of 10 KB would be 10 MB

    Deflater plain(0);  // no table: every block carries its header in full
    std::string honest = preface;
    for (std::uint32_t i = 0; i < 400; ++i) honest += headers_frames(2 * i + 1, plain.encode(h));
    AuthorityRewriter r2("api.example.com");
    CHECK(through(r2, honest, 65536).ok);
}

TEST_CASE("h2: a big header block is framed again in CONTINUATION frames of at most 16384 bytes")
{
    Deflater client;
    std::mt19937 rng(7);
    Headers big = request("127.242.0.3:9622");
    for (int i = 0; i < 12; ++i) {  // random values: HPACK's Huffman code cannot shrink them much
        std::string v;
        for (int j = 0; j < 3000; ++j) v += static_cast<char>('!' + rng() % 90);
        big.push_back({"x-blob-" + std::to_string(i), v});
    }
    std::string block = client.encode(big);
    REQUIRE(block.size() > 2 * 16384);
    Headers small = request("127.242.0.3:9622");
    std::string small_block = client.encode(small);  // refers to entries the big block added
    for (std::size_t client_piece : {std::size_t{0}, std::size_t{700}, std::size_t{16000}}) {
        std::string input = preface + headers_frames(1, block, END_HEADERS | END_STREAM, client_piece) +
                            headers_frames(3, small_block, END_HEADERS | END_STREAM, client_piece ? 3 : 0);
        for (std::size_t piece : pieces) {
            INFO("client frames of " << client_piece << ", fed " << piece << " bytes at a time");
            AuthorityRewriter r("api.example.com");
            auto got = through(r, input, piece);
            REQUIRE(got.ok);
            Inflater endpoint;
            auto blocks = blocks_of(got.frames, endpoint);
            REQUIRE(blocks.size() == 2);
            CHECK(blocks[0].frames >= 3);
            CHECK(blocks[0].flags == END_STREAM);  // END_HEADERS is on its last CONTINUATION
            CHECK(blocks[0].headers == with_authority(big, "api.example.com"));
            CHECK(got.frames[0].payload.size() == 16384);
            CHECK(blocks[1].frames == 1);
            CHECK(blocks[1].flags == (END_STREAM | END_HEADERS));
            CHECK(blocks[1].headers == with_authority(small, "api.example.com"));
        }
    }
}

TEST_CASE("h2: padding is dropped; END_STREAM and the priority fields are kept")
{
    Deflater client;
    const std::string priority("\x80\x00\x00\x03\x2a", 5);  // exclusive on stream 3, weight 43
    Headers h = request("web.mesh");
    // Encoded in the order sent: each block may refer to what the ones before it indexed.
    std::string input = preface;
    input += headers_frames(1, client.encode(h), PADDED | PRIORITY_FLAG | END_HEADERS | END_STREAM, 0,
                            std::string("\x07", 1) + priority, std::string(7, '\0'));
    input += headers_frames(3, client.encode(h), PADDED | END_HEADERS, 0, std::string("\xff", 1), std::string(255, '\0'));
    input += headers_frames(5, client.encode(h), PADDED | END_HEADERS, 0, std::string(1, '\0'));
    // Padded and split: the padding is the HEADERS frame's, the fragment goes on.
    input += headers_frames(7, client.encode(h), PADDED | PRIORITY_FLAG | END_HEADERS, 4, std::string("\x02", 1) + priority,
                            std::string(2, '\0'));
    for (std::size_t piece : pieces) {
        INFO("fed " << piece << " bytes at a time");
        AuthorityRewriter r("api.example.com");
        auto got = through(r, input, piece);
        REQUIRE(got.ok);
        Inflater endpoint;
        auto blocks = blocks_of(got.frames, endpoint);
        REQUIRE(blocks.size() == 4);
        CHECK(blocks[0].flags == (PRIORITY_FLAG | END_HEADERS | END_STREAM));
        CHECK(blocks[0].priority == priority);
        CHECK(blocks[1].flags == END_HEADERS);
        CHECK(blocks[2].flags == END_HEADERS);
        CHECK(blocks[3].flags == (PRIORITY_FLAG | END_HEADERS));
        CHECK(blocks[3].priority == priority);
        for (const auto& b : blocks) CHECK(b.headers == with_authority(h, "api.example.com"));
    }
}

TEST_CASE("h2: requests without an authority get one; trailers and plain CONNECT are left as they are")
{
    Deflater client;
    Headers bare = {{":method", "GET"}, {":scheme", "http"}, {":path", "/x"}, {"accept", "*/*"}};
    Headers host_only = {{":method", "GET"}, {":scheme", "http"}, {":path", "/y"}, {"Host", "web.mesh:80"}};
    Headers trailers = {{"grpc-status", "0"}, {"x-checksum", "abc"}};
    Headers connect = {{":method", "CONNECT"}, {":authority", "db.internal:5432"}};
    Headers extended = {{":method", "CONNECT"}, {":protocol", "websocket"}, {":scheme", "https"}, {":path", "/chat"},
                        {":authority", "127.242.0.9:443"}};
    std::string input = preface;  // encoded in the order sent
    input += headers_frames(1, client.encode(bare));
    input += headers_frames(3, client.encode(host_only));
    input += headers_frames(3, client.encode(trailers), END_HEADERS | END_STREAM);
    input += headers_frames(5, client.encode(connect));
    input += headers_frames(7, client.encode(extended));
    AuthorityRewriter r("api.example.com");
    auto got = through(r, input, 2);
    REQUIRE(got.ok);
    Inflater endpoint;
    auto blocks = blocks_of(got.frames, endpoint);
    REQUIRE(blocks.size() == 5);
    CHECK(blocks[0].headers == Headers{{":method", "GET"}, {":scheme", "http"}, {":path", "/x"}, {":authority", "api.example.com"},
                                       {"accept", "*/*"}});
    CHECK(blocks[1].headers == Headers{{":method", "GET"}, {":scheme", "http"}, {":path", "/y"}, {"Host", "api.example.com"}});
    CHECK(blocks[2].headers == trailers);
    CHECK(blocks[2].flags == (END_HEADERS | END_STREAM));
    CHECK(blocks[3].headers == connect);
    CHECK(blocks[4].headers == with_authority(extended, "api.example.com"));
}

TEST_CASE("h2: a stream that is not HTTP/2 from a client is refused")
{
    Deflater client;
    std::string block = client.encode(request("web:1"));
    CHECK(refused("GET / HTTP/1.1\r\nHost: web\r\n\r\n"));
    CHECK(refused("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\r"));
    CHECK(refused(preface + frame(PUSH_PROMISE, END_HEADERS, 1, std::string("\x00\x00\x00\x02", 4) + block)));
    CHECK(refused(preface + frame(CONTINUATION, END_HEADERS, 1, block)));  // no HEADERS before it
    CHECK(refused(preface + frame(HEADERS, END_HEADERS, 0, block)));        // stream 0
    // A header block interrupted by another frame, or continued on another stream.
    CHECK(refused(preface + frame(HEADERS, 0, 1, block.substr(0, 4)) + frame(PING, 0, 0, "12345678") +
                  frame(CONTINUATION, END_HEADERS, 1, block.substr(4))));
    CHECK(refused(preface + frame(HEADERS, 0, 1, block.substr(0, 4)) + frame(CONTINUATION, END_HEADERS, 3, block.substr(4))));
    // Padding as long as the rest, priority fields cut short.
    CHECK(refused(preface + frame(HEADERS, PADDED | END_HEADERS, 1, std::string("\x05", 1) + "abcd")));
    CHECK(refused(preface + frame(HEADERS, PADDED | END_HEADERS, 1, "")));
    CHECK(refused(preface + frame(HEADERS, PRIORITY_FLAG | END_HEADERS, 1, "abc")));
    // HPACK that does not decode: an index beyond both tables, a truncated literal.
    CHECK(refused(preface + frame(HEADERS, END_HEADERS, 1, "\xff\x7f")));
    CHECK(refused(preface + frame(HEADERS, END_HEADERS, 1, block.substr(0, block.size() - 3))));
    // Too big: a header list above 64 KiB decoded, an encoded block above 128 KiB.
    Headers huge = request("web:1");
    for (int i = 0; i < 5; ++i) huge.push_back({"x-" + std::to_string(i), std::string(14000, 'v')});
    Deflater plain(0);
    CHECK(refused(preface + headers_frames(1, plain.encode(huge), END_HEADERS, 16384)));
    std::string filler(std::size_t{1} << 20, '\0');
    CHECK(refused(preface + frame(HEADERS, 0, 1, block) +
                  frame(CONTINUATION, END_HEADERS, 1, filler.substr(0, AuthorityRewriter::max_encoded_block))));
    CHECK(refused(preface + frame(HEADERS, END_HEADERS, 1, filler.substr(0, AuthorityRewriter::max_encoded_block + 300))));
    // Just under the decoded limit passes.
    Headers fits = request("web:1");
    fits.push_back({"x-big", std::string(60000, 'v')});
    AuthorityRewriter r("api.example.com");
    CHECK(through(r, preface + headers_frames(1, plain.encode(fits), END_HEADERS, 16384), 4096).ok);
}

namespace {

const std::string python = "/usr/bin/python3";
const std::string peer = std::string(MESD_SOURCE_DIR) + "/test/proxy/peers/grpc_authority.py";

std::string vip_of(const Mesd& mesd, const std::string& name)
{
    return trim(output_of({"/usr/bin/dig", "@127.0.0.1", "-p", std::to_string(mesd.dns_port()), name + ".mesh", "+short",
                           "+tries=1", "+time=2"}));
}

std::string read_text(const std::filesystem::path& path)
{
    std::ifstream in(path);
    std::ostringstream text;
    text << in.rdbuf();
    return text.str();
}

std::string answers(const std::string& authority)
{
    return "first authority=" + authority + "\n1 authority=" + authority + "\n2 authority=" + authority + "\n3 authority=" +
           authority + "\nagain authority=" + authority + "\n";
}

}  // namespace

TEST_CASE("h2 end to end: gRPC over TLS and h2c reach DNS-named endpoints behind virtual hosting with their own name")
{
    int workers = GENERATE(1, 4);
    DYNAMIC_SECTION("workers " << workers)
    {
        Dir dir;
        auto ca = make_ca("mesd test CA");
        auto leaf = make_leaf(ca, "api.grpc.test", {"DNS:api.grpc.test"});
        auto cert = dir.write("leaf.crt", leaf.cert_pem);
        auto key = dir.write("leaf.key", leaf.key_pem);
        auto hosts = dir.write("hosts", "127.0.0.1 api.grpc.test plain.grpc.test web.h2.test echo.h2.test\n");

        // gRPC servers that answer their own name only: over TLS (ALPN h2), and h2c.
        int grpcs_port = free_tcp_port(), grpc_port = free_tcp_port(), web_port = free_tcp_port(), echo_port = free_tcp_port();
        Child grpcs({python, peer, "serve", "127.0.0.1:" + std::to_string(grpcs_port), "api.grpc.test", cert, key},
                    (dir.path / "grpcs.out").string(), (dir.path / "grpcs.err").string());
        Child grpc({python, peer, "serve", "127.0.0.1:" + std::to_string(grpc_port), "plain.grpc.test"},
                   (dir.path / "grpc.out").string(), (dir.path / "grpc.err").string());
        // nginx speaking h2c with two virtual hosts: web.h2.test, and a default for any other name.
        std::string listen = "    listen 127.0.0.1:" + std::to_string(web_port) + " http2";
        dir.write("nginx.conf", nginx_config(dir.path, listen + " default_server;\n    return 421 \"default $host\\n\";\n",
                                             "  server {\n" + listen + ";\n    server_name web.h2.test;\n"
                                             "    location / { return 200 \"vhost $host $http_host\\n\"; }\n  }\n"));
        Child nginx({"/usr/sbin/nginx", "-c", (dir.path / "nginx.conf").string(), "-e", (dir.path / "nginx.err").string()});
        // An echo: the test sees exactly what mesd sent the endpoint.
        Child echo({"/usr/bin/socat", "TCP-LISTEN:" + std::to_string(echo_port) + ",bind=127.0.0.1,fork,reuseaddr", "EXEC:/bin/cat"});
        for (int port : {grpcs_port, grpc_port, web_port, echo_port}) REQUIRE(eventually([&] { return accepting("127.0.0.1", port); }, 15s));

        const std::string tls = "  tls:\n    enabled: true\n    verification:\n      caCert:\n        inlineString: |\n" +
                                indent(ca.cert_pem, 10);
        auto mes = [&](const std::string& name, int match_port, const std::string& protocol, const std::string& address, int port,
                       const std::string& extra = "") {
            return "---\ntype: MeshExternalService\nname: " + name + "\nspec:\n  match: {port: " + std::to_string(match_port) +
                   ", protocol: " + protocol + "}\n  endpoints: [{address: " + address + ", port: " + std::to_string(port) + "}]\n" +
                   extra;
        };
        dir.write("resources/all.yaml",
                  "type: HostnameGenerator\nname: all\nspec:\n  selector:\n    meshExternalService: {}\n"
                  "  template: \"{{ .Name }}.mesh\"\n" +
                      mes("grpcs", 9741, "grpc", "api.grpc.test", grpcs_port, tls) + mes("grpc", 9742, "grpc", "plain.grpc.test", grpc_port) +
                      mes("web", 9743, "http2", "web.h2.test", web_port) + mes("webip", 9744, "http2", "127.0.0.1", web_port) +
                      mes("webtcp", 9745, "tcp", "web.h2.test", web_port) + mes("echo", 9746, "http2", "echo.h2.test", echo_port));
        MesdOptions options;
        options.conf_dir = (dir.path / "resources").string();
        options.dns_section = "  forward:\n    enabled: false\n";
        options.extra_config = "proxy:\n  connectTimeout: 2s\n  hostsFile: " + hosts + "\n  resolvers: [\"127.0.0.1:" +
                               std::to_string(free_udp_port()) + "\"]\n";
        options.extra_args = {"--workers", std::to_string(workers)};
        Mesd mesd(dir.path / "mesd", options);
        auto log = [&] { return mesd.log() + "\n" + read_text(dir.path / "grpcs.err") + read_text(dir.path / "grpc.err"); };

        // Unary, server streaming and unary again on one channel: later blocks refer to the
        // client's dynamic table.
        for (int i = 0; i < workers; ++i) {
            auto secure = run({python, peer, "call", vip_of(mesd, "grpcs") + ":9741"});
            INFO(secure.err << log());
            CHECK(secure.out == answers("api.grpc.test"));
            auto plain = run({python, peer, "call", vip_of(mesd, "grpc") + ":9742"});
            INFO(plain.err);
            CHECK(plain.out == answers("plain.grpc.test"));
        }

        std::string web = "http://" + vip_of(mesd, "web") + ":9743";
        for (int i = 0; i < 2 * workers; ++i) {
            auto curl = run({"/usr/bin/curl", "-sS", "--max-time", "5", "--http2-prior-knowledge", web + "/"});
            CHECK(curl.out == "vhost web.h2.test web.h2.test\n");
        }
        // Several requests on one connection (nghttp indexes its headers).
        auto many = run({"/usr/bin/nghttp", "-t", "5", web + "/a", web + "/b", web + "/c"});
        CHECK(many.out == "vhost web.h2.test web.h2.test\nvhost web.h2.test web.h2.test\nvhost web.h2.test web.h2.test\n");

        // An endpoint given by IP address, and protocol tcp: the client's authority goes as it is.
        auto ip = run({"/usr/bin/curl", "-sS", "--max-time", "5", "--http2-prior-knowledge", "http://" + vip_of(mesd, "webip") + ":9744/"});
        CHECK(ip.out.starts_with("default 127.242."));
        auto tcp = run({"/usr/bin/curl", "-sS", "--max-time", "5", "--http2-prior-knowledge", "http://" + vip_of(mesd, "webtcp") + ":9745/"});
        CHECK(tcp.out.starts_with("default 127.242."));

        // What the endpoint gets: the client's frames, a big header block framed again.
        Deflater client;
        Headers big = request(vip_of(mesd, "echo") + ":9746");
        for (int i = 0; i < 8; ++i) big.push_back({"x-blob-" + std::to_string(i), std::string(5000, static_cast<char>('a' + i))});
        std::string settings = frame(SETTINGS, 0, 0, std::string("\x00\x04\x00\x01\x00\x00", 6));
        std::string data = frame(DATA, END_STREAM, 1, std::string(5, '\0'));
        std::string sent = preface + settings + headers_frames(1, client.encode(big), END_HEADERS, 700) + data;
        auto got = frames_of(echoed(vip_of(mesd, "echo"), 9746, sent));
        REQUIRE(got.size() >= 4);
        CHECK(got.front().bytes == settings);
        CHECK(got.back().bytes == data);
        Inflater endpoint;
        auto blocks = blocks_of(got, endpoint);
        REQUIRE(blocks.size() == 1);
        CHECK(blocks[0].headers == with_authority(big, "echo.h2.test"));

        // Not HTTP/2 to a rewritten MES: the connection ends, nothing reaches the endpoint.
        CHECK(echoed(vip_of(mesd, "echo"), 9746, "GET / HTTP/1.1\r\nHost: echo\r\n\r\n").empty());
        CHECK(echoed(vip_of(mesd, "echo"), 9746, preface + frame(PUSH_PROMISE, END_HEADERS, 1, std::string(4, '\0'))).empty());
    }
}
