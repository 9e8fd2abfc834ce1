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
    const char* p = data;
    const char* end = data + size;
    const char* body = in_head_ ? nullptr : p;  // body bytes pass from here, as they are
    while (p < end) {
        if (raw_) {
            out.append(p, end);
            return true;
        }
        head_done_ = message_done_ = false;
        std::size_t n = http_parser_execute(&parser_, &settings_, p, static_cast<std::size_t>(end - p));
        if (head_done_) {
            if (head_bytes_ + n > max_head) return false;
            emit_head(out);
            in_head_ = false;
            http_parser_pause(&parser_, 0);
            p += n;        // the LF, read again by the parser
            body = p + 1;  // but not forwarded again
            continue;
        }
        if (message_done_) {
            if (body && p + n > body) out.append(body, p + n);
            body = nullptr;
            in_head_ = true;
            http_parser_pause(&parser_, 0);
            p += n;
            if (parser_.upgrade) raw_ = true;  // Upgrade, CONNECT: another protocol from here
            continue;
        }
        if (HTTP_PARSER_ERRNO(&parser_) != HPE_OK) return false;
        if (in_head_) {
            head_bytes_ += n;
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

}  // namespace proxy::detail
