#include "proxy/detail/health_check.hpp"

#include "proxy/detail/impl.hpp"
#include "proxy/detail/sockets.hpp"

#include <openssl/err.h>
#include <openssl/ssl.h>

#include <cstdlib>
#include <shared_mutex>

namespace proxy {

// One check of one address: a socket, a timer for the timeout, and the TLS session over
// memory BIOs. Frees itself once both handles are closed.
struct HealthProbe {
    HealthChecker* checker = nullptr;
    Proxy::Impl* impl = nullptr;
    std::shared_ptr<Service> service;
    std::shared_ptr<const Routing> routing;
    std::shared_ptr<const Target> target;
    std::optional<vip::Address> address;
    union {
        uv_tcp_t tcp;
        uv_pipe_t pipe;
    } h;
    bool is_pipe = false;
    uv_connect_t req{};
    uv_timer_t timer{};
    SSL* ssl = nullptr;
    bool done = false;
    int open_handles = 0;

    uv_handle_t* handle() { return is_pipe ? as_handle(&h.pipe) : as_handle(&h.tcp); }
    uv_stream_t* stream() { return is_pipe ? as_stream(&h.pipe) : as_stream(&h.tcp); }
    ~HealthProbe()
    {
        if (ssl) SSL_free(ssl);
    }
};

namespace {

struct ProbeWrite {
    uv_write_t req{};
    std::string data;
};

void close_probe(HealthProbe* p)
{
    auto closed = [](uv_handle_t* h) {
        auto* probe = static_cast<HealthProbe*>(h->data);
        if (--probe->open_handles > 0) return;
        auto& impl = *probe->impl;
        delete probe;
        --impl.closing_checks;
        impl.maybe_stopped();
    };
    ++p->impl->closing_checks;
    p->handle()->data = p;
    uv_close(p->handle(), closed);
    uv_close(as_handle(&p->timer), closed);
}

// Sends what OpenSSL has written. False when the write could not be queued.
bool flush(HealthProbe* p)
{
    BIO* out = SSL_get_wbio(p->ssl);
    while (BIO_ctrl_pending(out) > 0) {
        auto* w = new ProbeWrite;
        w->data.resize(BIO_ctrl_pending(out));
        int n = BIO_read(out, w->data.data(), static_cast<int>(w->data.size()));
        if (n <= 0) {
            delete w;
            break;
        }
        w->data.resize(static_cast<std::size_t>(n));
        uv_buf_t b = uv_buf_init(w->data.data(), static_cast<unsigned>(w->data.size()));
        if (uv_write(&w->req, p->stream(), &b, 1, [](uv_write_t* r, int) { delete reinterpret_cast<ProbeWrite*>(r); }) != 0) {
            delete w;
            return false;
        }
    }
    return true;
}

void drive(HealthProbe* p)
{
    int r = SSL_do_handshake(p->ssl);
    if (!flush(p)) {
        p->checker->finished(p, false, "cannot write to the endpoint");
        return;
    }
    if (r != 1) {
        int err = SSL_get_error(p->ssl, r);
        if (err == SSL_ERROR_WANT_READ) return;
        p->checker->finished(p, false, detail::TlsContext::failure_reason(p->ssl, err));
        return;
    }
    const auto& ep = p->target->endpoint;
    bool is_ip = ep.kind == conf::AddressKind::ipv4 || ep.kind == conf::AddressKind::ipv6;
    auto why = p->routing->tls->check_names(p->ssl, ep.address, is_ip);
    p->checker->finished(p, why.empty(), why);
}

void on_read(uv_stream_t* s, ssize_t nread, const uv_buf_t* buf)
{
    auto* p = static_cast<HealthProbe*>(s->data);
    if (nread > 0) BIO_write(SSL_get_rbio(p->ssl), buf->base, static_cast<int>(nread));
    std::free(buf->base);
    if (p->done || nread == 0) return;
    if (nread < 0) {
        p->checker->finished(p, false,
                             nread == UV_EOF ? "the server closed the connection during the handshake"
                                             : std::string("connection lost during the handshake: ") + uv_strerror(static_cast<int>(nread)));
        return;
    }
    drive(p);
}

void on_connect(uv_connect_t* req, int status)
{
    auto* p = static_cast<HealthProbe*>(req->data);
    if (p->done) return;
    if (status != 0) {
        p->checker->finished(p, false, uv_strerror(status));
        return;
    }
    if (!p->routing->tls) {
        p->checker->finished(p, true, {});
        return;
    }
    const auto& ep = p->target->endpoint;
    bool is_ip = ep.kind == conf::AddressKind::ipv4 || ep.kind == conf::AddressKind::ipv6;
    p->ssl = p->routing->tls->start(ep.address, is_ip, p->target->label);
    if (!p->ssl) {
        p->checker->finished(p, false, "cannot start a TLS session");
        return;
    }
    p->handle()->data = p;
    uv_read_start(
        p->stream(),
        [](uv_handle_t*, std::size_t, uv_buf_t* b) {
            constexpr std::size_t size = 16384;
            *b = uv_buf_init(static_cast<char*>(std::malloc(size)), static_cast<unsigned>(size));
        },
        on_read);
    drive(p);
}

}  // namespace

HealthChecker::~HealthChecker()
{
    // Never stopped (the loop is gone with its handles): what is left is only memory.
    for (HealthProbe* p : probes_) p->done = true;
    if (timer_) {
        timer_->data = nullptr;
        uv_close(as_handle(timer_), [](uv_handle_t* h) { delete reinterpret_cast<uv_timer_t*>(h); });
    }
}

void HealthChecker::start()
{
    if (timer_) return;
    timer_ = new uv_timer_t;
    uv_timer_init(impl_.loop, timer_);
    timer_->data = this;
    uv_unref(as_handle(timer_));
    auto every = static_cast<std::uint64_t>(impl_.options.health_check.interval.count());
    uv_timer_start(
        timer_, [](uv_timer_t* t) { static_cast<HealthChecker*>(t->data)->round(); }, every, every);
}

void HealthChecker::stop()
{
    stopped_ = true;
    if (timer_) {
        uv_timer_stop(timer_);
        uv_close(as_handle(timer_), [](uv_handle_t* h) { delete reinterpret_cast<uv_timer_t*>(h); });
        timer_ = nullptr;
    }
    auto open = probes_;
    for (HealthProbe* p : open) {
        p->done = true;
        probes_.erase(p);
        close_probe(p);
    }
}

bool HealthChecker::enabled_for(const Routing& routing) const
{
    return routing.route.health_check.value_or(impl_.options.health_check.enabled) && routing.tls_error.empty();
}

void HealthChecker::round()
{
    if (stopped_) return;
    std::vector<std::shared_ptr<Service>> services;
    {
        std::shared_lock lock(impl_.services_mutex);
        for (const auto& [key, s] : impl_.services) services.push_back(s);
    }
    for (auto& s : services) {
        auto routing = s->current();
        if (!routing) continue;
        if (!enabled_for(*routing)) {
            // Checks turned off for this MES (its label, its TLS settings): an endpoint they
            // took out must not stay out with nothing left to bring it back.
            std::lock_guard lock(s->mutex);
            for (const auto& t : routing->targets) t->health->forget_checks();
            continue;
        }
        for (const auto& t : routing->targets) {
            if (t->is_name()) check_name(s, t);
            else probe(s, routing, t, std::nullopt);
        }
    }
}

// A DNS name: its addresses from the first loop's resolver, then one check each.
void HealthChecker::check_name(std::shared_ptr<Service> service, std::shared_ptr<const Target> target)
{
    Shard* shard = impl_.shards.front().get();
    Proxy::Impl* impl = &impl_;
    shard->run([shard, impl, service, target] {
        if (shard->stopping) return;
        shard->resolver->resolve(target->endpoint.address, [impl, service, target](const detail::Resolver::Entry& e) {
            impl->on_control([impl, service, target, addrs = e.addresses] {
                if (impl->stopping || !impl->checker || addrs.empty()) return;
                auto routing = service->current();
                if (!routing) return;
                {
                    std::lock_guard lock(service->mutex);
                    target->health->reconcile(addrs, now_ms(), Health::absent_grace_ms);
                }
                for (const auto& a : addrs) impl->checker->probe(service, routing, target, a);
            });
        });
    });
}

void HealthChecker::probe(std::shared_ptr<Service> service, std::shared_ptr<const Routing> routing,
                          std::shared_ptr<const Target> target, std::optional<vip::Address> address)
{
    if (stopped_) return;
    const auto& ep = target->endpoint;
    std::optional<std::uint16_t> port = ep.port ? ep.port : routing->route.port;
    auto* p = new HealthProbe;
    p->checker = this;
    p->impl = &impl_;
    p->service = std::move(service);
    p->routing = std::move(routing);
    p->target = std::move(target);
    p->address = address;
    p->req.data = p;
    p->timer.data = p;
    uv_timer_init(impl_.loop, &p->timer);
    p->open_handles = 2;
    int rc = 0;
    if (ep.kind == conf::AddressKind::unix_socket) {
        p->is_pipe = true;
        uv_pipe_init(impl_.loop, &p->h.pipe, 0);
    } else {
        std::optional<vip::Address> a = address;
        if (!a) a = vip::Address::parse(ep.address);
        rc = a && port ? uv_tcp_init(impl_.loop, &p->h.tcp) : UV_EINVAL;
        if (rc != 0) {  // no socket, or nothing to dial: nothing is recorded
            p->open_handles = 1;
            ++impl_.closing_checks;
            uv_close(as_handle(&p->timer), [](uv_handle_t* h) {
                auto* probe = static_cast<HealthProbe*>(h->data);
                auto& impl = *probe->impl;
                delete probe;
                --impl.closing_checks;
                impl.maybe_stopped();
            });
            return;
        }
        address = a;
    }
    p->handle()->data = p;
    probes_.insert(p);
    if (p->is_pipe) {
        std::string path(p->target->endpoint.unix_path());
        uv_pipe_connect(&p->req, &p->h.pipe, path.c_str(), on_connect);
    } else {
        auto addr = to_sockaddr(*address, *port);
        rc = uv_tcp_connect(&p->req, &p->h.tcp, reinterpret_cast<const sockaddr*>(&addr), on_connect);
        if (rc != 0) {
            finished(p, false, uv_strerror(rc));
            return;
        }
    }
    uv_timer_start(
        &p->timer,
        [](uv_timer_t* t) {
            auto* probe = static_cast<HealthProbe*>(t->data);
            probe->checker->finished(probe, false, "health check timed out");
        },
        static_cast<std::uint64_t>(impl_.options.health_check.timeout.count()), 0);
}

void HealthChecker::finished(HealthProbe* p, bool passed, const std::string& error)
{
    if (p->done) return;
    p->done = true;
    probes_.erase(p);
    std::vector<Options::Event> events;
    {
        std::lock_guard lock(p->service->mutex);
        Health& h = *p->target->health;
        auto a = p->target->is_name() ? p->address : std::nullopt;
        if (!a || h.addresses.contains(*a)) {
            HealthSubject who;
            who.mesh = p->routing->route.mesh;
            who.name = p->routing->route.name;
            who.endpoint = p->target->label;
            who.address = a;
            who.port = p->target->endpoint.port.value_or(p->routing->route.port.value_or(0));
            record_check(h.at(a), impl_.health_policy(), passed, error, wall_ms(), who, events);
        }
    }
    impl_.emit(events);
    close_probe(p);
}

}  // namespace proxy
