// Small helpers over addresses and libuv handles that the proxy's connections and listeners
// share.
#pragma once

#include "vip/vip.hpp"

#include <uv.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cstdint>
#include <cstring>
#include <string>

namespace proxy {

inline std::string host_port(const vip::Address& a, std::uint16_t port)
{
    return a.family == vip::Family::v6 ? "[" + a.to_string() + "]:" + std::to_string(port)
                                       : a.to_string() + ":" + std::to_string(port);
}

inline sockaddr_storage to_sockaddr(const vip::Address& a, std::uint16_t port)
{
    sockaddr_storage ss{};
    if (a.family == vip::Family::v4) {
        auto* in = reinterpret_cast<sockaddr_in*>(&ss);
        in->sin_family = AF_INET;
        in->sin_port = htons(port);
        in->sin_addr.s_addr = htonl(static_cast<std::uint32_t>(a.value));
    } else {
        auto* in6 = reinterpret_cast<sockaddr_in6*>(&ss);
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons(port);
        auto bytes = a.bytes();
        std::memcpy(&in6->sin6_addr, bytes.data(), 16);
    }
    return ss;
}

template <class H>
uv_handle_t* as_handle(H* h)
{
    return reinterpret_cast<uv_handle_t*>(h);
}
template <class H>
uv_stream_t* as_stream(H* h)
{
    return reinterpret_cast<uv_stream_t*>(h);
}

inline void set_nodelay(uv_tcp_t* tcp) { uv_tcp_nodelay(tcp, 1); }

}  // namespace proxy
