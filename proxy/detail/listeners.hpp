// A listening socket of the proxy: one per VIP:port in bind mode (on the control loop), one
// per loop in redirect mode. Opening, accepting and closing them are in listeners.cpp.
#pragma once

#include "proxy/proxy.hpp"

#include <uv.h>

#include <cstdint>
#include <string>

namespace proxy {

struct Shard;

struct Listener {
    // libuv accepts on `tcp`, on `shard`'s loop; or, in bind mode with workers, `poll`
    // watches the socket `fd` on the control loop, which accepts itself and hands each
    // descriptor to a worker (libuv can accept only into a handle of the listener's loop).
    union {
        uv_tcp_t tcp;
        uv_poll_t poll;
    } h;
    bool polled = false;
    int fd = -1;  // polled: the listening socket, closed after its handle
    Proxy::Impl* impl = nullptr;
    Shard* shard = nullptr;   // where libuv accepts; null when polled
    bool redirect = false;    // redirect mode's, closed by its shard
    std::string service_key;  // bind mode; empty in redirect mode
    std::string address;      // "127.242.0.1:80"
    std::uint16_t port = 0;

    uv_handle_t* handle() { return polled ? reinterpret_cast<uv_handle_t*>(&h.poll) : reinterpret_cast<uv_handle_t*>(&h.tcp); }
};

}  // namespace proxy
