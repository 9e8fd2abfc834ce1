// The client-to-endpoint half of an HTTP/1.x connection for `protocol: http`: each request's
// head is parsed (nodejs http-parser, from Debian) and re-emitted with the Host header set
// to the endpoint's hostname (Kuma's auto host rewrite); bodies — Content-Length or chunked,
// byte for byte — pipelined requests and `Expect: 100-continue` pass through; after an
// Upgrade or CONNECT the rest of the stream passes untouched. A request that does not parse
// gets a 400 and the connection closes.
#pragma once

#include <http_parser.h>

#include <cstddef>
#include <string>
#include <utility>
#include <vector>

namespace proxy::detail {

class HostRewriter {
public:
    explicit HostRewriter(std::string host);
    HostRewriter(const HostRewriter&) = delete;
    HostRewriter& operator=(const HostRewriter&) = delete;

    // Appends to `out` what goes to the endpoint for `data` from the client; false when the
    // stream is not HTTP (the client gets bad_request()).
    bool feed(const char* data, std::size_t size, std::string& out);
    static const std::string& bad_request();

private:
    static int on_message_begin(http_parser* p);
    static int on_url(http_parser* p, const char* at, std::size_t len);
    static int on_header_field(http_parser* p, const char* at, std::size_t len);
    static int on_header_value(http_parser* p, const char* at, std::size_t len);
    static int on_headers_complete(http_parser* p);
    static int on_message_complete(http_parser* p);
    void emit_head(std::string& out) const;

    std::string host_;
    http_parser parser_{};
    http_parser_settings settings_{};
    bool in_head_ = true;   // bytes are being parsed into a head, not forwarded
    bool raw_ = false;      // upgraded: everything passes as it is
    bool head_done_ = false;
    bool message_done_ = false;
    bool last_was_value_ = false;
    std::size_t head_bytes_ = 0;
    std::string url_;
    std::vector<std::pair<std::string, std::string>> headers_;
};

}  // namespace proxy::detail
