#include "cmd/live.hpp"

#include <nlohmann/json.hpp>

#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <charconv>
#include <cstring>

namespace cmd {

namespace {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

std::string lower_first(std::string s)
{
    if (!s.empty() && s[0] >= 'A' && s[0] <= 'Z') s[0] = static_cast<char>(s[0] - 'A' + 'a');
    return s;
}

int remaining_ms(Clock::time_point deadline)
{
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    return left > 0 ? static_cast<int>(left) : 0;
}

struct Fd {
    int fd = -1;
    ~Fd()
    {
        if (fd >= 0) ::close(fd);
    }
};

// JSON nested deeper than this is refused before parsing (the parser recurses).
constexpr std::size_t max_depth = 64;

bool nesting_within(std::string_view text, std::size_t limit)
{
    std::size_t depth = 0;
    bool in_string = false, escaped = false;
    for (char c : text) {
        if (in_string) {
            if (escaped) escaped = false;
            else if (c == '\\') escaped = true;
            else if (c == '"') in_string = false;
        } else if (c == '"') {
            in_string = true;
        } else if (c == '[' || c == '{') {
            if (++depth > limit) return false;
        } else if ((c == ']' || c == '}') && depth > 0) {
            --depth;
        }
    }
    return true;
}

// A scalar as text: strings as they are, numbers and booleans as JSON writes them.
std::optional<std::string> text_of(const json& j, const char* key)
{
    if (!j.is_object()) return std::nullopt;
    auto it = j.find(key);
    if (it == j.end() || it->is_null() || it->is_object() || it->is_array()) return std::nullopt;
    if (it->is_string()) return it->get<std::string>();
    return it->dump();
}

std::string field(const json& j, const char* key, const char* label)
{
    auto v = text_of(j, key);
    return v ? std::string(label) + " " + *v : std::string();
}

void append(std::string& line, const std::string& part, const char* sep = ", ")
{
    if (part.empty()) return;
    line += (line.empty() ? "" : sep) + part;
}

// "last failure 2026-11-27T19:40:00Z: connection refused", or "".
std::string last_failure(const json& j)
{
    auto when = text_of(j, "lastFailure");
    auto why = text_of(j, "lastFailureReason");
    if (!when && !why) return {};
    std::string out = "last failure";
    if (when) out += " " + *when;
    if (why) out += ": " + *why;
    return out;
}

// True once `reply` holds its head and as much body as its Content-Length says (a server
// that keeps the connection open is not waited on); without one, the close ends the body.
bool complete(const std::string& reply)
{
    auto head_end = reply.find("\r\n\r\n");
    if (head_end == std::string::npos) return false;
    std::string head = reply.substr(0, head_end);
    for (auto& c : head)
        if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
    auto at = head.find("\r\ncontent-length:");
    if (at == std::string::npos) return false;
    auto p = head.find_first_not_of(' ', at + 17);
    if (p == std::string::npos) return false;
    std::size_t length = 0;
    auto [end, ec] = std::from_chars(head.data() + p, head.data() + head.size(), length);
    if (ec != std::errc{}) return false;
    (void)end;
    return reply.size() - (head_end + 4) >= length;
}

}  // namespace

std::expected<std::string, std::string> http_get(const std::string& host_port, const std::string& path,
                                                 std::chrono::milliseconds timeout, std::size_t max_body)
{
    std::string host, port;
    if (host_port.starts_with('[')) {
        auto close = host_port.find("]:");
        if (close == std::string::npos) return std::unexpected("not HOST:PORT");
        host = host_port.substr(1, close - 1);
        port = host_port.substr(close + 2);
    } else {
        auto colon = host_port.rfind(':');
        if (colon == std::string::npos || colon == 0) return std::unexpected("not HOST:PORT");
        host = host_port.substr(0, colon);
        port = host_port.substr(colon + 1);
    }
    unsigned port_number = 0;
    auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), port_number);
    if (ec != std::errc{} || end != port.data() + port.size() || port_number == 0 || port_number > 65535)
        return std::unexpected("not HOST:PORT");

    auto deadline = Clock::now() + timeout;
    addrinfo hints{};
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* found = nullptr;
    if (int rc = ::getaddrinfo(host.c_str(), port.c_str(), &hints, &found); rc != 0)
        return std::unexpected(std::string("cannot resolve ") + host + ": " + ::gai_strerror(rc));
    std::unique_ptr<addrinfo, void (*)(addrinfo*)> list(found, ::freeaddrinfo);

    Fd sock;
    std::string error = "no address";
    for (addrinfo* ai = found; ai; ai = ai->ai_next) {
        Fd s;
        s.fd = ::socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
        if (s.fd < 0) {
            error = lower_first(std::strerror(errno));
            continue;
        }
        int rc = ::connect(s.fd, ai->ai_addr, ai->ai_addrlen);
        if (rc != 0 && errno == EINPROGRESS) {
            pollfd p{s.fd, POLLOUT, 0};
            rc = ::poll(&p, 1, remaining_ms(deadline));
            if (rc == 0) {
                error = "timed out connecting";
                continue;
            }
            int soerr = 0;
            socklen_t len = sizeof soerr;
            ::getsockopt(s.fd, SOL_SOCKET, SO_ERROR, &soerr, &len);
            if (soerr != 0) {
                error = lower_first(std::strerror(soerr));
                continue;
            }
            rc = 0;
        } else if (rc != 0) {
            error = lower_first(std::strerror(errno));
            continue;
        }
        std::swap(sock.fd, s.fd);
        break;
    }
    if (sock.fd < 0) return std::unexpected(error);

    std::string request = "GET " + path + " HTTP/1.1\r\nHost: " + host_port + "\r\nConnection: close\r\n\r\n";
    std::size_t sent = 0;
    while (sent < request.size()) {
        pollfd p{sock.fd, POLLOUT, 0};
        if (::poll(&p, 1, remaining_ms(deadline)) != 1) return std::unexpected("timed out sending the request");
        auto n = ::send(sock.fd, request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
        if (n < 0 && errno != EAGAIN && errno != EINTR) return std::unexpected(lower_first(std::strerror(errno)));
        if (n > 0) sent += static_cast<std::size_t>(n);
    }
    std::string reply;
    const std::size_t max_reply = max_body + 64 * 1024;  // the body and room for headers
    char buf[65536];
    while (true) {
        pollfd p{sock.fd, POLLIN, 0};
        if (::poll(&p, 1, remaining_ms(deadline)) != 1) return std::unexpected("timed out reading the reply");
        auto n = ::recv(sock.fd, buf, sizeof buf, 0);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR) continue;
            return std::unexpected(lower_first(std::strerror(errno)));
        }
        if (n == 0) break;
        reply.append(buf, static_cast<std::size_t>(n));
        if (reply.size() > max_reply) return std::unexpected("reply larger than " + std::to_string(max_body) + " bytes");
        if (complete(reply)) break;
    }
    auto head_end = reply.find("\r\n\r\n");
    if (!reply.starts_with("HTTP/1.") || head_end == std::string::npos) return std::unexpected("not an HTTP reply");
    auto space = reply.find(' ');
    std::string status = space == std::string::npos ? "" : reply.substr(space + 1, 3);
    if (status != "200") return std::unexpected("HTTP " + status);
    return reply.substr(head_end + 4);
}

std::expected<std::vector<std::string>, std::string> live_lines(std::string_view config_json, const std::string& mesh,
                                                                const std::string& name)
{
    if (!nesting_within(config_json, max_depth)) return std::unexpected("JSON nested more than 64 levels deep");
    json root = json::parse(config_json, nullptr, false);
    if (root.is_discarded()) return std::unexpected("not valid JSON");
    if (!root.is_object()) return std::unexpected("not a JSON object");
    auto services = root.find("services");
    if (services == root.end()) return std::unexpected("no proxy in it (no \"services\")");
    if (!services->is_array()) return std::unexpected("\"services\" is not a list");
    const json* service = nullptr;
    for (const auto& s : *services)
        if (text_of(s, "mesh") == mesh && text_of(s, "name") == name) service = &s;
    if (!service) return std::vector<std::string>{};

    std::vector<std::string> lines;
    std::string listen;
    if (auto it = service->find("listeners"); it != service->end() && it->is_array())
        for (const auto& l : *it)
            if (l.is_string()) append(listen, l.get<std::string>(), " ");
    if (auto err = text_of(*service, "listenError")) append(listen, "(" + *err + ")", " ");
    if (!listen.empty()) lines.push_back("  listeners:   " + listen);
    std::string conns;
    append(conns, field(*service, "active", "active"));
    append(conns, field(*service, "total", "total"));
    if (!conns.empty()) lines.push_back("  connections: " + conns);
    if (auto err = text_of(*service, "tlsError")) lines.push_back("  TLS error:   " + *err);

    auto endpoints = service->find("endpoints");
    if (endpoints == service->end() || !endpoints->is_array() || endpoints->empty()) {
        lines.push_back("  health:      no endpoints");
        return lines;
    }
    for (const auto& e : *endpoints) {
        if (!e.is_object()) continue;
        std::string line = text_of(e, "address").value_or("?");
        if (auto p = text_of(e, "priority"); p && *p != "0") line += "(p" + *p + ")";
        line += ": " + text_of(e, "health").value_or(text_of(e, "state").value_or("unknown"));
        std::string counts;
        append(counts, field(e, "consecutiveFailures", "failures in a row"));
        append(counts, field(e, "connectFailures", "connect failures"));
        append(counts, field(e, "handshakeFailures", "handshake failures"));
        append(counts, field(e, "ejections", "ejections"));
        if (!counts.empty()) line += " (" + counts + ")";
        lines.push_back("  health:      " + line);
        if (auto last = last_failure(e); !last.empty()) lines.push_back("               " + last);
        if (auto it = e.find("resolved"); it != e.end() && it->is_array()) {
            std::string resolved;
            for (const auto& a : *it)
                if (a.is_string()) append(resolved, a.get<std::string>());
            lines.push_back("               resolved: " + (resolved.empty() ? std::string("none") : resolved));
        }
        if (auto it = e.find("addresses"); it != e.end() && it->is_array()) {
            for (const auto& a : *it) {
                if (!a.is_object()) continue;
                std::string row = text_of(a, "address").value_or("?") + ": " + text_of(a, "state").value_or("unknown");
                std::string c;
                append(c, field(a, "consecutiveFailures", "failures in a row"));
                append(c, field(a, "connectFailures", "connect failures"));
                append(c, field(a, "handshakeFailures", "handshake failures"));
                append(c, field(a, "ejections", "ejections"));
                if (!c.empty()) row += " (" + c + ")";
                lines.push_back("               address " + row);
                if (auto last = last_failure(a); !last.empty()) lines.push_back("                 " + last);
            }
        }
    }
    return lines;
}

std::expected<LiveMesPage, std::string> live_mes_page(std::string_view status_json)
{
    using ordered = nlohmann::ordered_json;
    if (!nesting_within(status_json, max_depth)) return std::unexpected("JSON nested more than 64 levels deep");
    ordered root = ordered::parse(status_json, nullptr, false);
    if (root.is_discarded()) return std::unexpected("not valid JSON");
    if (!root.is_object()) return std::unexpected("not a JSON object");
    auto mes = root.find("mes");
    if (mes == root.end() || !mes->is_object()) return std::unexpected("no \"mes\" in it");
    auto items = mes->find("items");
    if (items == mes->end() || !items->is_array()) return std::unexpected("\"mes.items\" is not a list");
    LiveMesPage out;
    auto count = [&](const char* key, std::size_t otherwise) {
        auto it = mes->find(key);
        return it != mes->end() && it->is_number_unsigned() ? it->get<std::size_t>() : otherwise;
    };
    out.total = count("total", items->size());
    out.page = count("page", 1);
    out.pages = count("pages", 1);
    for (auto& item : *items)
        if (item.is_object()) out.items.push_back(std::move(item));
    return out;
}

std::vector<std::string> live_mes_header()
{
    return {"MESH", "NAME", "VIP", "HOSTNAMES", "PORT", "PROTOCOL", "ENDPOINTS", "CONNECTIONS", "CONDITIONS"};
}

std::vector<std::string> live_mes_row(const nlohmann::ordered_json& item)
{
    auto joined = [&](const char* key) {
        std::string out;
        if (auto it = item.find(key); it != item.end() && it->is_array())
            for (const auto& v : *it)
                if (v.is_string()) append(out, v.get<std::string>(), ",");
        return out.empty() ? std::string("<none>") : out;
    };
    auto scalar = [&](const char* key, const char* otherwise) {
        auto it = item.find(key);
        if (it == item.end() || it->is_null() || it->is_object() || it->is_array()) return std::string(otherwise);
        return it->is_string() ? it->get<std::string>() : it->dump();
    };
    std::string endpoints;
    if (auto it = item.find("endpoints"); it != item.end() && it->is_array())
        for (const auto& e : *it) {
            if (!e.is_object()) continue;
            std::string one = e.value("address", std::string("?")) + "=" + e.value("health", std::string("unknown"));
            append(endpoints, one, ",");
        }
    bool live = item.value("live", false);
    std::string connections = live ? scalar("active", "0") + "/" + scalar("total", "0") : std::string("-");
    return {scalar("mesh", ""),     scalar("name", ""),       joined("vips"),
            joined("hostnames"),    scalar("port", "any"),    scalar("protocol", ""),
            endpoints.empty() ? std::string("<none>") : endpoints, connections, scalar("conditions", "")};
}

Value live_value(const nlohmann::ordered_json& item)
{
    switch (item.type()) {
    case nlohmann::ordered_json::value_t::object: {
        Value out = Value::object();
        for (const auto& [k, v] : item.items()) out.set(k, live_value(v));
        return out;
    }
    case nlohmann::ordered_json::value_t::array: {
        Value out = Value::array();
        for (const auto& v : item) out.push(live_value(v));
        return out;
    }
    case nlohmann::ordered_json::value_t::string: return Value(item.get<std::string>());
    case nlohmann::ordered_json::value_t::boolean: return Value(item.get<bool>());
    case nlohmann::ordered_json::value_t::number_integer: return Value(item.get<std::int64_t>());
    case nlohmann::ordered_json::value_t::number_unsigned:
        return Value(static_cast<std::int64_t>(std::min<std::uint64_t>(item.get<std::uint64_t>(), INT64_MAX)));
    case nlohmann::ordered_json::value_t::number_float: return Value(item.dump());
    default: return Value();
    }
}

}  // namespace cmd
