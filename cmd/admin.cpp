#include "cmd/admin.hpp"
#include "proxy/accept.hpp"

#include <uv.h>

#include <arpa/inet.h>

#include <algorithm>
#include <list>

namespace cmd {

namespace {

constexpr std::size_t max_request = 8192;

struct Connection {
    Admin::Impl& admin;
    uv_tcp_t tcp{};
    uv_timer_t timer{};
    int open_handles = 2;
    bool closing = false;
    bool replying = false;  // the request is in: not evicted for a newcomer
    std::string request;
    std::string response;
    uv_write_t write{};
    std::list<Connection*>::iterator self;
    explicit Connection(Admin::Impl& a) : admin(a)
    {
        tcp.data = this;
        timer.data = this;
    }
    void close();
    void on_data(const char* data, std::size_t n);
};

std::string status_text(int status)
{
    switch (status) {
    case 200: return "OK";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 400: return "Bad Request";
    case 503: return "Service Unavailable";
    default: return "Status";
    }
}

}  // namespace

struct Admin::Impl {
    uv_loop_t* loop;
    Handler handler;
    uv_tcp_t listener{};
    bool listening = false;
    std::list<Connection*> connections;
    std::function<void()> on_stopped;
    bool stopping = false;
    proxy::AcceptGuard accept_guard;
    Admin::Stats stats;

    // Room for one more: the oldest connection still waiting for its request goes (the list
    // is newest first). Those replying finish on their own.
    void make_room()
    {
        while (connections.size() >= Admin::max_connections) {
            auto oldest = std::find_if(connections.rbegin(), connections.rend(), [](const Connection* c) { return !c->replying; });
            if (oldest == connections.rend()) return;
            ++stats.evicted;
            (*oldest)->close();  // takes it off the list
        }
    }

    void maybe_stopped()
    {
        if (stopping && !listening && connections.empty() && on_stopped) {
            auto done = std::move(on_stopped);
            on_stopped = nullptr;
            done();
        }
    }
};

void Connection::close()
{
    if (closing) return;
    closing = true;
    admin.connections.erase(self);
    auto on_close = [](uv_handle_t* h) {
        auto* c = static_cast<Connection*>(h->data);
        if (--c->open_handles == 0) {
            Admin::Impl& a = c->admin;
            delete c;
            a.maybe_stopped();
        }
    };
    uv_close(reinterpret_cast<uv_handle_t*>(&tcp), on_close);
    uv_close(reinterpret_cast<uv_handle_t*>(&timer), on_close);
}

void Connection::on_data(const char* data, std::size_t n)
{
    request.append(data, n);
    if (request.find("\r\n\r\n") == std::string::npos && request.find("\n\n") == std::string::npos) {
        if (request.size() > max_request) close();
        return;
    }
    uv_read_stop(reinterpret_cast<uv_stream_t*>(&tcp));
    replying = true;
    HttpReply reply;
    auto line_end = request.find_first_of("\r\n");
    std::string line = request.substr(0, line_end);
    auto sp1 = line.find(' ');
    auto sp2 = line.find(' ', sp1 == std::string::npos ? 0 : sp1 + 1);
    if (sp1 == std::string::npos || sp2 == std::string::npos) {
        reply = HttpReply{400, "text/plain; charset=utf-8", "bad request\n"};
    } else if (line.substr(0, sp1) != "GET" && line.substr(0, sp1) != "HEAD") {
        reply = HttpReply{405, "text/plain; charset=utf-8", "only GET\n"};
    } else {
        std::string path = line.substr(sp1 + 1, sp2 - sp1 - 1);
        if (auto q = path.find('?'); q != std::string::npos) path.resize(q);
        try {
            reply = admin.handler(path);
        } catch (const std::exception& e) {
            reply = HttpReply{500, "text/plain; charset=utf-8", std::string(e.what()) + "\n"};
        }
        if (line.starts_with("HEAD")) reply.body.clear();
    }
    response = "HTTP/1.1 " + std::to_string(reply.status) + " " + status_text(reply.status) +
               "\r\nContent-Type: " + reply.content_type + "\r\nContent-Length: " + std::to_string(reply.body.size()) +
               "\r\nConnection: close\r\n\r\n" + reply.body;
    uv_buf_t buf = uv_buf_init(response.data(), static_cast<unsigned>(response.size()));
    write.data = this;
    if (uv_write(&write, reinterpret_cast<uv_stream_t*>(&tcp), &buf, 1,
                 [](uv_write_t* w, int) { static_cast<Connection*>(w->data)->close(); }) < 0)
        close();
}

Admin::Admin(void* uv_loop, Handler handler) : impl_(std::make_unique<Impl>())
{
    impl_->loop = static_cast<uv_loop_t*>(uv_loop);
    impl_->handler = std::move(handler);
}

Admin::~Admin() = default;

std::expected<std::string, std::string> Admin::start(const conf::HostPort& listen)
{
    auto& a = *impl_;
    sockaddr_storage ss{};
    std::string host = listen.host.empty() ? "127.0.0.1" : listen.host;
    int rc = host.find(':') != std::string::npos ? uv_ip6_addr(host.c_str(), listen.port, reinterpret_cast<sockaddr_in6*>(&ss))
                                                 : uv_ip4_addr(host.c_str(), listen.port, reinterpret_cast<sockaddr_in*>(&ss));
    if (rc < 0) return std::unexpected("admin.listen " + listen.to_string() + ": " + uv_strerror(rc));
    uv_tcp_init(a.loop, &a.listener);
    a.listener.data = &a;
    a.listening = true;
    if ((rc = uv_tcp_bind(&a.listener, reinterpret_cast<sockaddr*>(&ss), 0)) < 0 ||
        (rc = uv_listen(reinterpret_cast<uv_stream_t*>(&a.listener), 64, [](uv_stream_t* l, int status) {
             auto* admin = static_cast<Admin::Impl*>(l->data);
             if (status < 0) {
                 if (admin->accept_guard.on_error(l, status)) ++admin->stats.accept_errors;
                 return;
             }
             admin->make_room();
             auto* c = new Connection(*admin);
             uv_tcp_init(admin->loop, &c->tcp);
             uv_timer_init(admin->loop, &c->timer);
             admin->connections.push_front(c);
             c->self = admin->connections.begin();
             if (uv_accept(l, reinterpret_cast<uv_stream_t*>(&c->tcp)) < 0 || !admin->accept_guard.serving(l)) {
                 c->close();
                 return;
             }
             // A client that never finishes its request is cut off.
             uv_timer_start(&c->timer, [](uv_timer_t* t) { static_cast<Connection*>(t->data)->close(); }, 10000, 0);
             uv_read_start(reinterpret_cast<uv_stream_t*>(&c->tcp),
                           [](uv_handle_t*, size_t suggested, uv_buf_t* b) {
                               b->base = static_cast<char*>(std::malloc(suggested));
                               b->len = b->base ? suggested : 0;
                           },
                           [](uv_stream_t* s, ssize_t n, const uv_buf_t* b) {
                               auto* conn = static_cast<Connection*>(s->data);
                               if (n > 0) conn->on_data(b->base, static_cast<std::size_t>(n));
                               else if (n < 0) conn->close();
                               std::free(b->base);
                           });
         })) < 0)
        return std::unexpected("admin.listen " + listen.to_string() + ": " + uv_strerror(rc));
    sockaddr_storage actual{};
    int len = sizeof actual;
    uv_tcp_getsockname(&a.listener, reinterpret_cast<sockaddr*>(&actual), &len);
    char name[INET6_ADDRSTRLEN] = "?";
    int port = 0;
    if (actual.ss_family == AF_INET) {
        uv_ip4_name(reinterpret_cast<sockaddr_in*>(&actual), name, sizeof name);
        port = ntohs(reinterpret_cast<sockaddr_in*>(&actual)->sin_port);
        return std::string(name) + ":" + std::to_string(port);
    }
    uv_ip6_name(reinterpret_cast<sockaddr_in6*>(&actual), name, sizeof name);
    port = ntohs(reinterpret_cast<sockaddr_in6*>(&actual)->sin6_port);
    return "[" + std::string(name) + "]:" + std::to_string(port);
}

Admin::Stats Admin::stats() const { return impl_->stats; }

void Admin::stop(std::function<void()> done)
{
    auto& a = *impl_;
    a.stopping = true;
    a.on_stopped = std::move(done);
    if (a.listening)
        uv_close(reinterpret_cast<uv_handle_t*>(&a.listener), [](uv_handle_t* h) {
            auto* admin = static_cast<Admin::Impl*>(h->data);
            admin->listening = false;
            admin->maybe_stopped();
        });
    else
        a.maybe_stopped();
}

}  // namespace cmd
