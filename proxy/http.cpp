#include "proxy/detail/http.hpp"

#include <strings.h>

namespace proxy::detail {

namespace {

// A request head larger than this is refused (nginx's default large_client_header_buffers
// allows 32 KiB lines; a whole head of 64 KiB is generous).
constexpr std::size_t max_head = std::size_t{64} << 10;

}  // namespace

HostRewriter::HostRewriter(std::string host) : host_(std::move(host))
{
    http_parser_init(&parser_, HTTP_REQUEST);
    parser_.data = this;
    settings_.on_message_begin = on_message_begin;
    settings_.on_url = on_url;
    settings_.on_header_field = on_header_field;
    settings_.on_header_value = on_header_value;
    settings_.on_headers_complete = on_headers_complete;
    settings_.on_message_complete = on_message_complete;
    http_parser_init(&response_, HTTP_RESPONSE);
    response_.data = this;
    response_settings_.on_headers_complete = on_response_headers_complete;
}

const std::string& HostRewriter::bad_request()
{
    static const std::string reply =
        "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: 12\r\nConnection: close\r\n\r\nbad request\n";
    return reply;
}

int HostRewriter::on_message_begin(http_parser* p)
{
    auto* self = static_cast<HostRewriter*>(p->data);
    self->url_.clear();
    self->headers_.clear();
    self->last_was_value_ = false;
    self->head_bytes_ = 0;
    return 0;
}

int HostRewriter::on_url(http_parser* p, const char* at, std::size_t len)
{
    static_cast<HostRewriter*>(p->data)->url_.append(at, len);
    return 0;
}

// Fields and values may arrive in pieces, across reads.
int HostRewriter::on_header_field(http_parser* p, const char* at, std::size_t len)
{
    auto* self = static_cast<HostRewriter*>(p->data);
    if (self->headers_.empty() || self->last_was_value_) self->headers_.emplace_back();
    self->headers_.back().first.append(at, len);
    self->last_was_value_ = false;
    return 0;
}

int HostRewriter::on_header_value(http_parser* p, const char* at, std::size_t len)
{
    auto* self = static_cast<HostRewriter*>(p->data);
    if (self->headers_.empty()) return 1;
    self->headers_.back().second.append(at, len);
    self->last_was_value_ = true;
    return 0;
}

// Pausing here returns control with the parser on the head's final LF, which it reads
// again when resumed; the head is re-emitted before the body goes through.
int HostRewriter::on_headers_complete(http_parser* p)
{
    auto* self = static_cast<HostRewriter*>(p->data);
    self->head_done_ = true;
    // http-parser's own test (RFC 9110 7.8: `Upgrade` with `Connection: upgrade`, or CONNECT).
    self->asks_switch_ = p->upgrade;
    http_parser_pause(p, 1);
    return 0;
}

// Pausing here returns with the parser just past the message.
int HostRewriter::on_message_complete(http_parser* p)
{
    auto* self = static_cast<HostRewriter*>(p->data);
    self->message_done_ = true;
    http_parser_pause(p, 1);
    return 0;
}

void HostRewriter::emit_head(std::string& out) const
{
    out += http_method_str(static_cast<http_method>(parser_.method));
    out += ' ';
    out += url_;
    out += " HTTP/" + std::to_string(parser_.http_major) + "." + std::to_string(parser_.http_minor) + "\r\n";
    bool host_done = false;
    for (const auto& [field, value] : headers_) {
        if (strcasecmp(field.c_str(), "host") == 0) {
            if (host_done) continue;  // one Host only
            out += field + ": " + host_ + "\r\n";
            host_done = true;
            continue;
        }
        out += field + ": " + value + "\r\n";
    }
    if (!host_done) out += "Host: " + host_ + "\r\n";
    out += "\r\n";
}

bool HostRewriter::feed(const char* data, std::size_t size, std::string& out)
{
    if (waiting_) {
        held_.append(data, size);
        return true;
    }
    const char* p = data;
    const char* end = data + size;
    const char* body = in_head_ ? nullptr : p;  // body bytes pass from here, as they are
    while (p < end) {
        // The endpoint switched protocols (or its responses stopped parsing) without this
        // side waiting for it: the switch takes effect at a request boundary, so that no
        // head parsed in part is lost.
        if (raw_ || (switch_ && at_boundary_)) {
            raw_ = true;
            out.append(p, end);
            return true;
        }
        head_done_ = message_done_ = false;
        std::size_t n = http_parser_execute(&parser_, &settings_, p, static_cast<std::size_t>(end - p));
        if (head_done_) {
            if (head_bytes_ + n > max_head) return false;
            emit_head(out);
            pending_.push_back({static_cast<http_method>(parser_.method), ++requests_});
            in_head_ = false;
            at_boundary_ = false;
            http_parser_pause(&parser_, 0);
            p += n;        // the LF, read again by the parser
            body = p + 1;  // but not forwarded again
            continue;
        }
        if (message_done_) {
            if (body && p + n > body) out.append(body, p + n);
            body = nullptr;
            in_head_ = true;
            at_boundary_ = true;
            http_parser_pause(&parser_, 0);
            p += n;
            // A request asking to switch whose answer has not come (an endpoint may answer
            // before the body is in): what follows is not known to be HTTP until it does.
            bool unanswered = !pending_.empty() && pending_.back().seq == requests_;
            if (asks_switch_ && unanswered && !switch_) {
                asks_switch_ = false;
                waiting_ = true;
                held_.append(p, end);
                return true;
            }
            asks_switch_ = false;
            continue;
        }
        if (HTTP_PARSER_ERRNO(&parser_) != HPE_OK) return false;
        if (in_head_) {
            head_bytes_ += n;
            if (n > 0) at_boundary_ = false;
            if (head_bytes_ > max_head) return false;
        } else if (body && p + n > body) {
            out.append(body, p + n);
            body = p + n;
        }
        p += n;
        if (n == 0) break;
    }
    return true;
}

// The response's status and the request it answers (responses come in the order of the
// requests, RFC 9112 9.3.2) decide whether it has a body and whether the connection switches.
int HostRewriter::on_response_headers_complete(http_parser* p)
{
    auto* self = static_cast<HostRewriter*>(p->data);
    unsigned status = p->status_code;
    // Interim (100 Continue, 103 Early Hints): no body, and its request still waits for the
    // final response (RFC 9110 15.2).
    if (status >= 100 && status < 200 && status != 101) return 1;
    // A response to no request (a 408 before closing) is taken as one to a GET.
    Pending req{HTTP_GET, 0};
    if (!self->pending_.empty()) {
        req = self->pending_.front();
        self->pending_.pop_front();
    }
    bool last = self->pending_.empty();
    if (status == 101 || (req.method == HTTP_CONNECT && status >= 200 && status < 300)) {
        // The rest of both streams is the new protocol: 2 makes http-parser stop after
        // this head (and after a 2xx to CONNECT, which has no body, RFC 9110 9.3.6).
        self->responses_raw_ = true;
        self->switch_ = true;
        if (self->waiting_) self->answered_ = true;
        return 2;
    }
    if (last && self->waiting_) self->answered_ = true;  // declined: the held bytes are requests
    // No body, whatever Content-Length says (RFC 9110 6.4.1).
    if (req.method == HTTP_HEAD || status == 204 || status == 304) return 1;
    return 0;
}

bool HostRewriter::watch(const char* data, std::size_t size)
{
    if (responses_raw_) return false;
    bool before = answered_;
    http_parser_execute(&response_, &response_settings_, data, size);
    if (!responses_raw_ && HTTP_PARSER_ERRNO(&response_) != HPE_OK) {
        // Not HTTP/1 as http-parser reads it: mesd stops following the connection, and the
        // client's stream passes untouched from its next request on (as after a switch),
        // rather than be held or cut.
        responses_raw_ = true;
        switch_ = true;
        if (waiting_) answered_ = true;
    }
    return answered_ && !before;
}

bool HostRewriter::release(std::string& out)
{
    waiting_ = false;
    answered_ = false;
    std::string rest = std::move(held_);
    held_.clear();
    return feed(rest.data(), rest.size(), out);
}

void HostRewriter::drop_held()
{
    waiting_ = false;
    answered_ = false;
    held_.clear();
}

std::string failure_response(Unreachable why)
{
    // Envoy's words for the same failures (its local replies), so that what clients and
    // operators match on carries over.
    const std::string reset = "upstream connect error or disconnect/reset before headers. reset reason: ";
    const char* status = "503 Service Unavailable";
    std::string body;
    switch (why) {
    case Unreachable::connect_failed:
        status = "502 Bad Gateway";
        body = reset + "connection failure";
        break;
    case Unreachable::connect_timeout:
        status = "502 Bad Gateway";
        body = reset + "connection timeout";
        break;
    case Unreachable::tls_handshake:
        status = "502 Bad Gateway";
        body = reset + "connection failure, transport failure reason: TLS handshake failed";
        break;
    case Unreachable::no_healthy:
        body = "no healthy upstream";
        break;
    case Unreachable::overflow:
        body = reset + "overflow";
        break;
    case Unreachable::tls_unusable:
        body = reset + "connection failure, transport failure reason: TLS settings unusable";
        break;
    case Unreachable::local:
        body = reset + "local reset";
        break;
    }
    return std::string("HTTP/1.1 ") + status + "\r\nContent-Type: text/plain\r\nContent-Length: " + std::to_string(body.size()) +
           "\r\nConnection: close\r\n\r\n" + body;
}

}  // namespace proxy::detail
