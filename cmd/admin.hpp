// The admin endpoint: a minimal HTTP/1.1 server on loopback for /metrics, /ready and
// /config. One request per connection; the handler builds the whole body.
#pragma once

#include "conf/conf.hpp"

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

    Admin(void* uv_loop, Handler handler);
    ~Admin();
    Admin(const Admin&) = delete;
    Admin& operator=(const Admin&) = delete;

    std::expected<std::string, std::string> start(const conf::HostPort& listen);  // the bound address
    void stop(std::function<void()> done);

    struct Impl;

private:
    std::unique_ptr<Impl> impl_;
};

}  // namespace cmd
