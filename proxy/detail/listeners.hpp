// A listening socket of the proxy: one per VIP:port in bind mode, a single one in redirect
// mode. Opening, accepting and closing them are in listeners.cpp.
#pragma once

#include "proxy/proxy.hpp"

#include <uv.h>

#include <cstdint>
#include <string>

namespace proxy {

struct Listener {
    uv_tcp_t tcp;
    Proxy::Impl* impl = nullptr;
    std::string service_key;  // bind mode; empty in redirect mode
    std::string address;      // "127.242.0.1:80"
    std::uint16_t port = 0;
};

}  // namespace proxy
