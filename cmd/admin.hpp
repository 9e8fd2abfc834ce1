// The admin endpoint: a minimal HTTP/1.1 server on loopback for /metrics, /ready and
// /config. One request per connection; the handler builds the whole body. At most
// max_connections are open at once: a newcomer beyond them closes the oldest connection
// still waiting for its request, so that idle or slow clients cannot take the descriptors
// /ready and /metrics need.
#pragma once

#include "conf/conf.hpp"

#include <cstdint>
#include <expected>
#include <functional>
#include <memory>
#include <string>

namespace cmd {

struct HttpReply {
    int status = 200;
    std::string content_type = "text/plain; charset=utf-8";
    std::string body;
};

class Admin {
public:
    using Handler = std::function<HttpReply(const std::string& path)>;
    static constexpr std::size_t max_connections = 16;

    struct Stats {
        std::uint64_t evicted = 0;        // closed, waiting for their request, to make room
        std::uint64_t accept_errors = 0;  // accept failed for want of descriptors
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

}  // namespace cmd
