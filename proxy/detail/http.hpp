// HTTP/1.x for `protocol: http`.
//
// HostRewriter follows both directions of a connection to a DNS-named endpoint. Client to
// endpoint: each request's head is parsed (nodejs http-parser, from Debian) and re-emitted
// with the Host header set to the endpoint's hostname (Kuma's auto host rewrite); bodies —
// Content-Length or chunked, byte for byte — pipelined requests and `Expect: 100-continue`
// pass through. A request that does not parse gets a 400 and the connection closes.
// Endpoint to client: responses are parsed too but pass unchanged; they say which request
// each one answers, and so whether the connection switches protocols.
//
// Switching protocols. A request that asks to (`Upgrade` with `Connection: upgrade`, or
// CONNECT) switches the connection only when the endpoint agrees: `101 Switching Protocols`
// (or a 2xx to CONNECT). Until its answer is known, what the client sends after it is held,
// not parsed: after a 101 it is the new protocol (a WebSocket frame is not an HTTP request),
// after a refusal (h2c declined with a 200, a WebSocket refused with a 4xx) it is the next
// request and gets the Host rewrite like any other. The connection stops reading the client
// while more than hold_limit bytes are held (see Connection::forward). After the switch,
// both directions pass untouched.
//
// failure_response(): what a client of `protocol: http` (any endpoint) is told when its
// request reaches no endpoint, in Envoy's words.
#pragma once

#include <http_parser.h>

#include <cstddef>
#include <cstdint>
#include <deque>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace proxy::detail {

class HostRewriter {
public:
    // Bytes the client sent after a request that asks to switch protocols, held until the
    // endpoint answers it: past this the client is not read.
    static constexpr std::size_t hold_limit = std::size_t{64} << 10;

    explicit HostRewriter(std::string host);
    HostRewriter(const HostRewriter&) = delete;
    HostRewriter& operator=(const HostRewriter&) = delete;

    // Appends to `out` what goes to the endpoint for `data` from the client; false when the
    // stream is not HTTP (the client gets bad_request()). While a switch waits for its
    // answer, `data` is held and nothing is appended.
    bool feed(const char* data, std::size_t size, std::string& out);
    static const std::string& bad_request();

    // Reads `data` from the endpoint (it goes to the client unchanged, whatever this says).
    // True when the answer a held stream waited for has come: call release() then.
    bool watch(const char* data, std::size_t size);
    // Appends to `out` what was held, as it is after a switch, else parsed as requests;
    // false when that is not HTTP (as feed()).
    bool release(std::string& out);

    // The endpoint closed its side before answering: what was held is dropped (nothing
    // will answer it) and the client's stream is no longer held.
    void drop_held();

    bool waiting() const { return waiting_; }  // a switch waits for its answer
    std::size_t held() const { return held_.size(); }
    // The endpoint switched protocols (or stopped answering in HTTP): from the client's next
    // request on (at once when held), nothing is parsed either way.
    bool switched() const { return switch_; }

private:
    static int on_message_begin(http_parser* p);
    static int on_url(http_parser* p, const char* at, std::size_t len);
    static int on_header_field(http_parser* p, const char* at, std::size_t len);
    static int on_header_value(http_parser* p, const char* at, std::size_t len);
    static int on_headers_complete(http_parser* p);
    static int on_message_complete(http_parser* p);
    static int on_response_headers_complete(http_parser* p);
    void emit_head(std::string& out) const;

    std::string host_;
    http_parser parser_{};
    http_parser_settings settings_{};
    bool in_head_ = true;   // bytes are being parsed into a head, not forwarded
    bool raw_ = false;      // switched: the client's bytes pass as they are
    bool at_boundary_ = true;  // between two requests (nothing of the next one parsed)
    bool head_done_ = false;
    bool message_done_ = false;
    bool last_was_value_ = false;
    bool asks_switch_ = false;  // the request being parsed asks to switch protocols
    bool switch_ = false;       // the endpoint switched: the client's stream goes raw at its next request
    std::size_t head_bytes_ = 0;
    std::string url_;
    std::vector<std::pair<std::string, std::string>> headers_;

    // Requests whose heads went to the endpoint and whose final response has not come.
    struct Pending {
        http_method method;
        std::uint64_t seq;
    };
    std::deque<Pending> pending_;
    std::uint64_t requests_ = 0;  // request heads sent so far: the last one's seq
    bool waiting_ = false;  // the last request asked to switch; its answer has not come
    bool answered_ = false; // that answer came (watch() said so; release() not yet called)
    std::string held_;
    http_parser response_{};
    http_parser_settings response_settings_{};
    bool responses_raw_ = false;  // switched, or the endpoint's stream did not parse: no longer followed
};

// Why a request reached no endpoint; failure_response() words it.
enum class Unreachable {
    connect_failed,   // 502: every attempt refused, reset or unresolved
    connect_timeout,  // 502: the last attempt timed out
    tls_handshake,    // 502: the last attempt failed in its TLS handshake
    no_healthy,       // 503: no endpoint to try (none configured, all ejected)
    overflow,         // 503: over maxConnectionsPerService
    tls_unusable,     // 503: the MES's TLS settings cannot be used
    local,            // 503: mesd could not open a socket
};

// The whole HTTP/1.1 response: status, `Content-Type: text/plain`, `Content-Length`,
// `Connection: close`, and a one-line body (no newline, as Envoy sends it).
std::string failure_response(Unreachable why);

}  // namespace proxy::detail
