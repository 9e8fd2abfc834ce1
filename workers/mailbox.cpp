#include "workers/mailbox.hpp"

namespace workers {

Mailbox::Mailbox(uv_loop_t* loop)
{
    wake_.data = this;
    uv_async_init(loop, &wake_, [](uv_async_t* a) { static_cast<Mailbox*>(a->data)->drain(); });
}

Mailbox::~Mailbox() = default;

void Mailbox::post(std::function<void()> fn)
{
    std::lock_guard lock(mutex_);
    if (closed_) return;
    queue_.push_back(std::move(fn));
    // Sent under the lock: close() cannot close the handle between the check and the send.
    uv_async_send(&wake_);
}

void Mailbox::close()
{
    drain();
    {
        std::lock_guard lock(mutex_);
        closed_ = true;
    }
    uv_close(reinterpret_cast<uv_handle_t*>(&wake_), nullptr);
}

void Mailbox::drain() noexcept
{
    std::vector<std::function<void()>> work;
    {
        std::lock_guard lock(mutex_);
        work.swap(queue_);
    }
    for (auto& fn : work) fn();
}

}  // namespace workers
