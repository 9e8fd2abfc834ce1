// What the TCP listeners of mesd (the proxy's, and DNS over TCP and the admin endpoint,
// which borrow this header) do when accept(2) fails for want of descriptors (EMFILE,
// ENFILE). Header-only: each module that listens links libuv itself.
//
// libuv meets EMFILE with a spare descriptor of its own (close it, accept and close what is
// pending, open it again). When that spare is gone (ENFILE, or another thread took the
// descriptor first) it hands the error to the connection callback and calls accept again at
// once, in a loop that returns only when accept stops failing: the daemon would spin there
// and answer nothing. AcceptGuard ends that loop by shedding the pending connections through
// a spare of its own, counts the failure, and for a moment afterwards closes what is accepted
// at once instead of serving it, so that descriptors freed by closing connections are not
// taken straight back (HAProxy and nginx stop accepting for a moment on EMFILE for the same
// reason). What it cannot end: the spare's slot taken by something else before the next
// failure, with no descriptor freed since. One guard per loop: only its loop's thread uses
// it, except errors() and shed(), which any thread may read.
#pragma once

#include "workers/worker.hpp"

#include <uv.h>

#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdint>

namespace proxy {

class AcceptGuard {
public:
    static constexpr std::uint64_t pause_ms = 100;

    AcceptGuard() { spare_ = ::open("/dev/null", O_RDONLY | O_CLOEXEC); }
    ~AcceptGuard()
    {
        if (spare_ >= 0) ::close(spare_);
    }
    AcceptGuard(const AcceptGuard&) = delete;
    AcceptGuard& operator=(const AcceptGuard&) = delete;

    // From a connection callback whose status is an error. True when it was a want of
    // descriptors: counted, the pending connections shed, accepting paused.
    bool on_error(uv_stream_t* listener, int status) noexcept
    {
        if (status != UV_EMFILE && status != UV_ENFILE) return false;
        uv_os_fd_t fd = -1;
        if (uv_fileno(reinterpret_cast<uv_handle_t*>(listener), &fd) != 0) fd = -1;
        return on_error(listener->loop, fd, status);
    }

    // The same for a listening socket `fd` whose accept(2) the caller runs itself (the
    // proxy's bind-mode listeners when connections are handed to workers); `status` is the
    // failure as a libuv error.
    bool on_error(uv_loop_t* loop, int fd, int status) noexcept
    {
        if (status != UV_EMFILE && status != UV_ENFILE) return false;
        ++errors_;
        paused_until_ = uv_now(loop) + pause_ms;
        if (fd < 0) return true;
        if (spare_ < 0) spare_ = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
        if (spare_ < 0) return true;  // nothing to shed with: libuv tries again at once
        ::close(spare_);
        spare_ = -1;
        // Accept fails with EMFILE before it looks at the queue, so the spare's slot is what
        // lets it empty the queue. The slot stays free: libuv's next accept then says EAGAIN
        // and libuv goes back to polling. The spare is taken again after the pause.
        for (int n = 0; n < 4096; ++n) {
            int c = ::accept4(fd, nullptr, nullptr, SOCK_CLOEXEC);
            if (c < 0) break;
            ::close(c);
            ++shed_;
        }
        return true;
    }

    // From a connection callback with status 0, after uv_accept: false while paused, when the
    // caller closes the connection at once.
    bool serving(uv_stream_t* listener) noexcept { return serving(listener->loop); }
    bool serving(uv_loop_t* loop) noexcept
    {
        if (paused_until_ == 0) return true;
        if (uv_now(loop) >= paused_until_) {
            if (spare_ < 0) spare_ = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
            paused_until_ = 0;
            return true;
        }
        ++shed_;
        return false;
    }

    std::uint64_t errors() const { return errors_; }  // accept failures for want of descriptors
    std::uint64_t shed() const { return shed_; }      // connections closed unserved because of them

private:
    int spare_ = -1;
    std::uint64_t paused_until_ = 0;
    // Written by the listener's loop, read by the metrics page on another thread.
    workers::Counter errors_;
    workers::Counter shed_;
};

}  // namespace proxy
