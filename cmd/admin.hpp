// The admin endpoint: a small HTTP/1.1 server on loopback for the status page, /metrics,
// /ready, /config and /status.json. Requests are read by http_parser (the parser the proxy
// uses for protocol http); the handler builds each whole body.
//
// Connections. HTTP/1.1 connections persist (HTTP/1.0 ones when they ask to): a browser
// refreshing the status page, or a scraper, reuses one. Pipelined requests are answered one
// at a time, in order; at most max_requests_per_connection are answered on one connection
// (the last says Connection: close), and one idle for keep_alive_idle after its reply is
// closed. A request must arrive whole within request_timeout of its first byte.
//
// Limits. A request line's target over max_url_bytes is answered 414, headers over
// max_header_bytes 431, anything http_parser refuses 400; each closes the connection.
// Methods other than GET and HEAD get 405 with Allow. At most max_connections are open at
// once: a newcomer beyond them closes the oldest connection still waiting for a request
// (idle between requests counts), so that idle or slow clients cannot take the descriptors
// /ready and /metrics need.
#pragma once

#include "conf/conf.hpp"

#include <chrono>
#include <cstdint>
#include <expected>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace cmd {

struct HttpRequest {
    std::string method;  // "GET", "HEAD" (the handler sees no other)
    std::string path;    // "/status.json": the target before '?', as sent (not decoded)
    std::string query;   // "page=2": after '?', without it; empty when none
    // In arrival order, names lower-cased, values with surrounding blanks removed.
    std::vector<std::pair<std::string, std::string>> headers;

    // The first header `name` (lower case), if any.
    std::optional<std::string> header(std::string_view name) const;
    // The first query parameter `name`, percent-decoded ('+' read as a space), if any.
    std::optional<std::string> param(std::string_view name) const;
};

struct HttpReply {
    int status = 200;
    std::string content_type = "text/plain; charset=utf-8";
    std::string body;
    std::vector<std::pair<std::string, std::string>> headers;  // more, e.g. Content-Security-Policy
};

class Admin {
public:
    using Handler = std::function<HttpReply(const HttpRequest& request)>;
    static constexpr std::size_t max_connections = 16;
    static constexpr std::size_t max_requests_per_connection = 100;
    static constexpr std::size_t max_url_bytes = 2048;
    static constexpr std::size_t max_header_bytes = 8192;  // all header lines of one request
    static constexpr std::chrono::milliseconds request_timeout{10000};
    static constexpr std::chrono::milliseconds keep_alive_idle{5000};

    struct Stats {
        std::uint64_t evicted = 0;        // closed, waiting for their request, to make room
        std::uint64_t accept_errors = 0;  // accept failed for want of descriptors
        std::uint64_t requests = 0;       // answered, malformed ones included
    };

    Admin(void* uv_loop, Handler handler);
    ~Admin();
    Admin(const Admin&) = delete;
    Admin& operator=(const Admin&) = delete;

    std::expected<std::string, std::string> start(const conf::HostPort& listen);  // the bound address
    void stop(std::function<void()> done);
    Stats stats() const;

    struct Impl;

private:
    std::unique_ptr<Impl> impl_;
};

// Text safe inside HTML elements and quoted attributes: & < > " ' escaped.
std::string html_escape(std::string_view text);

}  // namespace cmd
