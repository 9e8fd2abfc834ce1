// workers: the threads that serve. Each Worker is a thread running a libuv loop of its own;
// the DNS server and the proxy put their sockets on it. The daemon's own loop (the control
// loop: store polling, index builds, the admin endpoint, conf-dir, cluster) hands work to a
// worker with post(). With `workers: 1` there are none: everything runs on the control loop.
//
// Threads. A Worker's loop is touched by its own thread only, once start() has run; before
// that, the thread that made it may set handles up on it (binding every listener before any
// worker runs). post() may be called from any thread.
#pragma once

#include <uv.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

namespace workers {

class Worker {
public:
    // `cpu`: the CPU the thread is pinned to; none: wherever the scheduler puts it.
    Worker(std::size_t index, std::optional<int> cpu);
    ~Worker();  // joins the thread (finish() must have been called once it started)
    Worker(const Worker&) = delete;
    Worker& operator=(const Worker&) = delete;

    uv_loop_t* loop() { return &loop_; }
    std::size_t index() const { return index_; }
    std::optional<int> cpu() const { return cpu_; }
    // Runs the loop on a new thread named "mesd-w<index>".
    void start();
    // Runs `fn` on the worker's thread, after what was posted before it. Before start(), it
    // runs once the thread starts; after finish(), never.
    void post(std::function<void()> fn);
    // The loop ends once the handles on it are closed: call after everything on it has
    // been told to close (posted work still runs first). Idempotent.
    void finish();
    // Waits for the thread to end.
    void join();
    // Whether the calling thread is this worker's.
    bool on_thread() const { return std::this_thread::get_id() == thread_.get_id(); }

private:
    void drain() noexcept;

    std::size_t index_;
    std::optional<int> cpu_;
    uv_loop_t loop_{};
    uv_async_t wake_{};
    std::mutex mutex_;
    std::vector<std::function<void()>> queue_;  // under mutex_
    bool finishing_ = false;                    // under mutex_
    std::thread thread_;
};

// The CPUs this process may run on (sched_getaffinity), in order.
std::vector<int> allowed_cpus();

// A counter that one thread increments and any thread reads (the metrics page): a relaxed
// load and store, so the increment is a plain add with no locked instruction on the hot
// path, and a reader on another thread sees a value that was true at some moment.
class Counter {
public:
    Counter() = default;
    Counter(std::uint64_t v) : value_(v) {}
    Counter(const Counter& o) : value_(o.load()) {}
    Counter& operator=(const Counter& o)
    {
        value_.store(o.load(), std::memory_order_relaxed);
        return *this;
    }
    Counter& operator=(std::uint64_t v)
    {
        value_.store(v, std::memory_order_relaxed);
        return *this;
    }
    Counter& operator+=(std::uint64_t n)
    {
        value_.store(value_.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
        return *this;
    }
    Counter& operator++()
    {
        return *this += 1;
    }
    std::uint64_t operator++(int)
    {
        auto v = load();
        *this += 1;
        return v;
    }
    // A gauge (connections open on one worker) goes down too, by the same single writer.
    Counter& operator-=(std::uint64_t n)
    {
        value_.store(value_.load(std::memory_order_relaxed) - n, std::memory_order_relaxed);
        return *this;
    }
    Counter& operator--()
    {
        return *this -= 1;
    }
    std::uint64_t load() const { return value_.load(std::memory_order_relaxed); }
    operator std::uint64_t() const { return load(); }

private:
    std::atomic<std::uint64_t> value_{0};
};

}  // namespace workers
