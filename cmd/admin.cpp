#include "cmd/admin.hpp"
#include "proxy/accept.hpp"

#include <http_parser.h>
#include <uv.h>

#include <arpa/inet.h>

#include <algorithm>
#include <cstdlib>
#include <list>

namespace cmd {

namespace {

// Bytes read ahead of the reply being written (pipelined requests): reading stops beyond this
// until the reply is out.
constexpr std::size_t max_pending = 64 * 1024;

std::string lower(std::string s)
{
    for (auto& c : s)
        if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
    return s;
}

std::string trimmed(const std::string& s)
{
    auto b = s.find_first_not_of(" \t");
    if (b == std::string::npos) return {};
    auto e = s.find_last_not_of(" \t");
    return s.substr(b, e - b + 1);
}

int hex_digit(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

std::string percent_decoded(std::string_view s)
{
    std::string out;
    for (std::size_t i = 0; i < s.size(); ++i) {
        if (s[i] == '+') {
            out += ' ';
        } else if (s[i] == '%' && i + 2 < s.size() && hex_digit(s[i + 1]) >= 0 && hex_digit(s[i + 2]) >= 0) {
            out += static_cast<char>(hex_digit(s[i + 1]) * 16 + hex_digit(s[i + 2]));
            i += 2;
        } else {
            out += s[i];
        }
    }
    return out;
}

std::string status_text(int status)
{
    switch (status) {
    case 200: return "OK";
    case 400: return "Bad Request";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 414: return "URI Too Long";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 503: return "Service Unavailable";
    default: return "Status";
    }
}

struct Connection {
    Admin::Impl& admin;
    uv_tcp_t tcp{};
    uv_timer_t timer{};
    int open_handles = 2;
    bool closing = false;
    bool replying = false;     // a reply is being written: not evicted for a newcomer
    bool reading = false;
    bool peer_done = false;    // the client has sent all it will
    bool close_after = false;  // the reply being written is the last
    std::size_t answered = 0;
    http_parser parser{};
    std::string pending;  // read, not yet parsed
    // The request being parsed.
    HttpRequest request;
    std::string url, field, value;
    bool in_value = false;
    std::size_t header_bytes = 0;
    int refused = 0;  // 414 or 431, when a callback stopped the parser for size
    std::string response;
    uv_write_t write{};
    std::list<Connection*>::iterator self;
    explicit Connection(Admin::Impl& a) : admin(a)
    {
        tcp.data = this;
        timer.data = this;
        http_parser_init(&parser, HTTP_REQUEST);
        parser.data = this;
    }
    void close();
    void start_reading();
    void on_data(const char* data, std::size_t n);
    void advance();
    void answer();
    void send(const HttpReply& reply, bool head, bool keep_alive);
    void arm(std::chrono::milliseconds after);
    void end_header()
    {
        if (!field.empty() || in_value) request.headers.emplace_back(lower(field), trimmed(value));
        field.clear();
        value.clear();
        in_value = false;
    }
};

Connection* of(http_parser* p) { return static_cast<Connection*>(p->data); }

const http_parser_settings parser_settings = [] {
    http_parser_settings s{};
    s.on_message_begin = [](http_parser* p) {
        auto* c = of(p);
        c->request = HttpRequest{};
        c->url.clear();
        c->field.clear();
        c->value.clear();
        c->in_value = false;
        c->header_bytes = 0;
        c->arm(Admin::request_timeout);  // the whole request within this of its first byte
        return 0;
    };
    s.on_url = [](http_parser* p, const char* at, std::size_t n) {
        auto* c = of(p);
        c->url.append(at, n);
        if (c->url.size() <= Admin::max_url_bytes) return 0;
        c->refused = 414;
        return 1;
    };
    s.on_header_field = [](http_parser* p, const char* at, std::size_t n) {
        auto* c = of(p);
        if (c->in_value) c->end_header();
        if (c->field.empty()) c->header_bytes += 4;  // ": " and CRLF count too: many tiny headers are large
        c->field.append(at, n);
        if ((c->header_bytes += n) <= Admin::max_header_bytes) return 0;
        c->refused = 431;
        return 1;
    };
    s.on_header_value = [](http_parser* p, const char* at, std::size_t n) {
        auto* c = of(p);
        c->in_value = true;
        c->value.append(at, n);
        if ((c->header_bytes += n) <= Admin::max_header_bytes) return 0;
        c->refused = 431;
        return 1;
    };
    s.on_headers_complete = [](http_parser* p) {
        of(p)->end_header();
        return 0;
    };
    // A body (no GET needs one) is read past and dropped.
    s.on_message_complete = [](http_parser* p) {
        // One request at a time: the parser stops here, and goes on with what follows once
        // this one's reply is written.
        http_parser_pause(p, 1);
        return 0;
    };
    return s;
}();

}  // namespace

std::optional<std::string> HttpRequest::header(std::string_view name) const
{
    for (const auto& [n, v] : headers)
        if (n == name) return v;
    return std::nullopt;
}

std::optional<std::string> HttpRequest::param(std::string_view name) const
{
    std::string_view rest = query;
    while (!rest.empty()) {
        auto amp = rest.find('&');
        std::string_view pair = rest.substr(0, amp);
        rest = amp == std::string_view::npos ? std::string_view{} : rest.substr(amp + 1);
        auto eq = pair.find('=');
        if (percent_decoded(pair.substr(0, eq)) != name) continue;
        return eq == std::string_view::npos ? std::string() : percent_decoded(pair.substr(eq + 1));
    }
    return std::nullopt;
}

std::string html_escape(std::string_view text)
{
    std::string out;
    out.reserve(text.size());
    for (char c : text) {
        switch (c) {
        case '&': out += "&amp;"; break;
        case '<': out += "&lt;"; break;
        case '>': out += "&gt;"; break;
        case '"': out += "&quot;"; break;
        case '\'': out += "&#39;"; break;
        default: out += c;
        }
    }
    return out;
}

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

    // Room for one more: the oldest connection still waiting for a request goes (the list
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

void Connection::arm(std::chrono::milliseconds after)
{
    uv_timer_start(&timer, [](uv_timer_t* t) { static_cast<Connection*>(t->data)->close(); },
                   static_cast<std::uint64_t>(after.count()), 0);
}

void Connection::start_reading()
{
    if (reading || closing || peer_done) return;
    reading = true;
    uv_read_start(reinterpret_cast<uv_stream_t*>(&tcp),
                  [](uv_handle_t*, size_t suggested, uv_buf_t* b) {
                      b->base = static_cast<char*>(std::malloc(suggested));
                      b->len = b->base ? suggested : 0;
                  },
                  [](uv_stream_t* s, ssize_t n, const uv_buf_t* b) noexcept {
                      auto* conn = static_cast<Connection*>(s->data);
                      if (n > 0) {
                          conn->on_data(b->base, static_cast<std::size_t>(n));
                      } else if (n == UV_EOF) {
                          // Replies to what came before the end are still written.
                          conn->peer_done = true;
                          conn->reading = false;
                          uv_read_stop(s);
                          if (!conn->replying) conn->advance();
                      } else if (n < 0) {
                          conn->close();
                      }
                      std::free(b->base);
                  });
}

void Connection::on_data(const char* data, std::size_t n)
{
    pending.append(data, n);
    if (replying) {
        if (pending.size() > max_pending) {
            uv_read_stop(reinterpret_cast<uv_stream_t*>(&tcp));
            reading = false;
        }
        return;
    }
    advance();
}

// Parses what has been read, up to the end of the next request, and answers it; the rest
// waits for that reply to be written.
void Connection::advance()
{
    while (!closing && !replying && !pending.empty()) {
        std::size_t n = http_parser_execute(&parser, &parser_settings, pending.data(), pending.size());
        pending.erase(0, std::min(n, pending.size()));
        auto err = HTTP_PARSER_ERRNO(&parser);
        if (err == HPE_PAUSED) {
            http_parser_pause(&parser, 0);
            answer();
        } else if (err != HPE_OK) {
            int status = refused ? refused : err == HPE_HEADER_OVERFLOW ? 431 : 400;
            ++admin.stats.requests;
            replying = true;
            send(HttpReply{status, "text/plain; charset=utf-8",
                           status == 414   ? "request target too long\n"
                           : status == 431 ? "request headers too large\n"
                                           : std::string("bad request: ") + http_errno_description(err) + "\n",
                           {}},
                 false, false);
            return;
        } else if (n == 0) {
            break;
        }
    }
    // A client that ended its side with no request to answer: done.
    if (!closing && !replying && peer_done) close();
}

void Connection::answer()
{
    replying = true;
    ++answered;
    ++admin.stats.requests;
    const bool head = parser.method == HTTP_HEAD;
    HttpReply reply;
    http_parser_url u{};
    http_parser_url_init(&u);
    if (parser.method != HTTP_GET && parser.method != HTTP_HEAD) {
        reply = HttpReply{405, "text/plain; charset=utf-8", "only GET and HEAD\n", {{"Allow", "GET, HEAD"}}};
    } else if (http_parser_parse_url(url.data(), url.size(), 0, &u) != 0 || !(u.field_set & (1 << UF_PATH)) ||
               url[u.field_data[UF_PATH].off] != '/') {
        reply = HttpReply{400, "text/plain; charset=utf-8", "bad request: not a request target\n", {}};
    } else {
        request.method = head ? "HEAD" : "GET";
        request.path = url.substr(u.field_data[UF_PATH].off, u.field_data[UF_PATH].len);
        if (u.field_set & (1 << UF_QUERY)) request.query = url.substr(u.field_data[UF_QUERY].off, u.field_data[UF_QUERY].len);
        try {
            reply = admin.handler(request);
        } catch (const std::exception& e) {
            reply = HttpReply{500, "text/plain; charset=utf-8", std::string(e.what()) + "\n", {}};
        }
    }
    bool keep_alive = http_should_keep_alive(&parser) != 0 && answered < Admin::max_requests_per_connection &&
                      !admin.stopping && reply.status != 400;
    send(reply, head, keep_alive);
}

void Connection::send(const HttpReply& reply, bool head, bool keep_alive)
{
    close_after = !keep_alive;
    response = "HTTP/1.1 " + std::to_string(reply.status) + " " + status_text(reply.status) +
               "\r\nContent-Type: " + reply.content_type + "\r\nContent-Length: " + std::to_string(reply.body.size()) + "\r\n";
    for (const auto& [header, text] : reply.headers) response += header + ": " + text + "\r\n";
    response += keep_alive ? "Connection: keep-alive\r\n\r\n" : "Connection: close\r\n\r\n";
    if (!head) response += reply.body;
    arm(Admin::request_timeout);  // a client that does not read its reply is cut off
    uv_buf_t buf = uv_buf_init(response.data(), static_cast<unsigned>(response.size()));
    write.data = this;
    if (uv_write(&write, reinterpret_cast<uv_stream_t*>(&tcp), &buf, 1, [](uv_write_t* w, int status) noexcept {
            auto* c = static_cast<Connection*>(w->data);
            c->response.clear();
            c->response.shrink_to_fit();
            if (status < 0 || c->close_after || c->closing) return c->close();
            c->replying = false;
            if (c->admin.stopping) return c->close();
            c->arm(Admin::keep_alive_idle);  // until the next request's first byte
            c->start_reading();
            c->advance();
        }) < 0)
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
        (rc = uv_listen(reinterpret_cast<uv_stream_t*>(&a.listener), 64, [](uv_stream_t* l, int status) noexcept {
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
             // A client that never sends a request is cut off.
             c->arm(Admin::request_timeout);
             c->start_reading();
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
    // Connections kept alive between requests would hold the stop for their idle time: they
    // go now; those writing a reply close once it is out.
    std::vector<Connection*> idle;
    for (auto* c : a.connections)
        if (!c->replying) idle.push_back(c);
    for (auto* c : idle) c->close();
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
