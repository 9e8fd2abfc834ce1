#include "workers/worker.hpp"

#include <pthread.h>
#include <sched.h>

#include <cstdio>

namespace workers {

Worker::Worker(std::size_t index, std::optional<int> cpu) : index_(index), cpu_(cpu)
{
    uv_loop_init(&loop_);
    wake_.data = this;
    uv_async_init(&loop_, &wake_, [](uv_async_t* a) { static_cast<Worker*>(a->data)->drain(); });
}

Worker::~Worker()
{
    finish();
    join();
    if (!thread_.joinable() && uv_loop_alive(&loop_)) {
        // Never started: close the wake-up handle here, on the only thread there is.
        uv_run(&loop_, UV_RUN_DEFAULT);
    }
    uv_loop_close(&loop_);
}

void Worker::start()
{
    thread_ = std::thread([this] {
        char name[16];
        std::snprintf(name, sizeof name, "mesd-w%zu", index_);
        pthread_setname_np(pthread_self(), name);
        if (cpu_) {
            cpu_set_t set;
            CPU_ZERO(&set);
            CPU_SET(*cpu_, &set);
            // Best effort: a CPU taken away since the list was read leaves the thread unpinned.
            pthread_setaffinity_np(pthread_self(), sizeof set, &set);
        }
        drain();  // work posted before the thread ran
        uv_run(&loop_, UV_RUN_DEFAULT);
    });
}

void Worker::post(std::function<void()> fn)
{
    std::lock_guard lock(mutex_);
    if (finishing_) return;
    queue_.push_back(std::move(fn));
    // Sent under the lock: the handle cannot be closed between the check and the send.
    uv_async_send(&wake_);
}

void Worker::finish()
{
    std::lock_guard lock(mutex_);
    if (finishing_) return;
    finishing_ = true;
    // The wake-up handle is closed on the loop's thread, after the work queued before this.
    uv_async_send(&wake_);
}

void Worker::join()
{
    if (thread_.joinable() && !on_thread()) thread_.join();
}

void Worker::drain() noexcept
{
    std::vector<std::function<void()>> work;
    bool closing = false;
    {
        std::lock_guard lock(mutex_);
        work.swap(queue_);
        closing = finishing_;
    }
    for (auto& fn : work) fn();
    if (closing && !uv_is_closing(reinterpret_cast<uv_handle_t*>(&wake_)))
        uv_close(reinterpret_cast<uv_handle_t*>(&wake_), nullptr);
}

std::vector<int> allowed_cpus()
{
    std::vector<int> out;
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof set, &set) != 0) return out;
    for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu)
        if (CPU_ISSET(cpu, &set)) out.push_back(cpu);
    return out;
}

}  // namespace workers
