// A loop's inbox: other threads hand functions to a libuv loop they do not run, and the
// loop's thread runs them in order. The daemon's control loop takes the workers' "done"s
// through one (a DNS server stopped on its worker, say).
#pragma once

#include <uv.h>

#include <functional>
#include <mutex>
#include <vector>

namespace workers {

class Mailbox {
public:
    // On the loop's thread (or before it runs).
    explicit Mailbox(uv_loop_t* loop);
    ~Mailbox();  // after close() has run and the loop has ended
    Mailbox(const Mailbox&) = delete;
    Mailbox& operator=(const Mailbox&) = delete;

    // Any thread: `fn` runs on the loop's thread. After close(), nothing more is run.
    void post(std::function<void()> fn);
    // On the loop's thread: runs what is queued, then closes the handle (the loop can end).
    void close();

private:
    void drain() noexcept;

    uv_async_t wake_{};
    std::mutex mutex_;
    std::vector<std::function<void()>> queue_;  // under mutex_
    bool closed_ = false;                       // under mutex_
};

}  // namespace workers
