#include "proxy/detail/resolver.hpp"

#include <ldns/ldns.h>

#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstring>

namespace proxy::detail {

namespace {

std::optional<sockaddr_storage> server_address(const conf::HostPort& hp)
{
    sockaddr_storage ss{};
    if (hp.host.find(':') != std::string::npos) {
        if (uv_ip6_addr(hp.host.c_str(), hp.port, reinterpret_cast<sockaddr_in6*>(&ss)) != 0) return std::nullopt;
    } else if (uv_ip4_addr(hp.host.empty() ? "127.0.0.1" : hp.host.c_str(), hp.port,
                           reinterpret_cast<sockaddr_in*>(&ss)) != 0) {
        return std::nullopt;
    }
    return ss;
}

bool same_address(const sockaddr* a, const sockaddr_storage& b)
{
    if (a->sa_family != b.ss_family) return false;
    if (a->sa_family == AF_INET) {
        auto* x = reinterpret_cast<const sockaddr_in*>(a);
        auto* y = reinterpret_cast<const sockaddr_in*>(&b);
        return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
    }
    auto* x = reinterpret_cast<const sockaddr_in6*>(a);
    auto* y = reinterpret_cast<const sockaddr_in6*>(&b);
    return x->sin6_port == y->sin6_port && std::memcmp(&x->sin6_addr, &y->sin6_addr, 16) == 0;
}

std::vector<std::uint8_t> make_query(const std::string& name, ldns_rr_type type, std::uint16_t id)
{
    std::vector<std::uint8_t> wire;
    ldns_rdf* owner = ldns_dname_new_frm_str((name.ends_with('.') ? name : name + ".").c_str());
    if (!owner) return wire;
    ldns_pkt* q = ldns_pkt_query_new(owner, type, LDNS_RR_CLASS_IN, LDNS_RD);
    if (!q) return wire;
    ldns_pkt_set_id(q, id);
    std::uint8_t* data = nullptr;
    std::size_t size = 0;
    if (ldns_pkt2wire(&data, q, &size) == LDNS_STATUS_OK) wire.assign(data, data + size);
    free(data);
    ldns_pkt_free(q);
    return wire;
}

template <class H>
void close_and_delete(H* handle)
{
    uv_close(reinterpret_cast<uv_handle_t*>(handle), [](uv_handle_t* h) { delete reinterpret_cast<H*>(h); });
}

std::string lower(std::string_view s)
{
    std::string out(s);
    for (auto& c : out)
        if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
    return out;
}

std::string address_list(const std::vector<vip::Address>& addresses)
{
    std::string out;
    for (const auto& a : addresses) out += (out.empty() ? "" : ",") + a.to_string();
    return out.empty() ? "none" : out;
}

}  // namespace

// ---- The hosts file --------------------------------------------------------------------------

HostsFile::HostsFile(std::string path, std::chrono::milliseconds recheck)
    : path_(std::move(path)), recheck_(recheck), table_(std::make_shared<const Table>())
{
}

HostsFile::Table HostsFile::parse(std::string_view text)
{
    Table table;
    auto is_space = [](char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\f' || c == '\v'; };
    while (!text.empty()) {
        auto eol = text.find('\n');
        std::string_view line = text.substr(0, eol);
        text = eol == std::string_view::npos ? std::string_view() : text.substr(eol + 1);
        if (auto hash = line.find('#'); hash != std::string_view::npos) line = line.substr(0, hash);
        std::vector<std::string_view> words;
        std::size_t i = 0;
        while (i < line.size()) {
            while (i < line.size() && is_space(line[i])) ++i;
            std::size_t start = i;
            while (i < line.size() && !is_space(line[i])) ++i;
            if (i > start) words.push_back(line.substr(start, i - start));
        }
        if (words.size() < 2) continue;
        auto address = vip::Address::parse(words[0]);
        if (!address) continue;
        for (std::size_t w = 1; w < words.size(); ++w) {
            std::string name = lower(words[w]);
            if (name.ends_with('.')) name.pop_back();
            if (name.empty()) continue;
            auto& list = table[name];
            if (std::ranges::find(list, *address) == list.end()) list.push_back(*address);
        }
    }
    // As a DNS answer gives them: A first, then AAAA, each in the file's order.
    for (auto& [name, list] : table)
        std::ranges::stable_sort(list, {}, [](const vip::Address& a) { return a.family != vip::Family::v4; });
    return table;
}

std::optional<std::vector<vip::Address>> HostsFile::lookup(std::string_view name)
{
    if (path_.empty()) return std::nullopt;
    std::string key = lower(name);
    if (key.ends_with('.')) key.pop_back();
    std::shared_ptr<const Table> table;
    {
        std::lock_guard lock(mutex_);
        auto now = std::chrono::steady_clock::now();
        if (!ever_checked_ || now - checked_ >= recheck_) {
            ever_checked_ = true;
            checked_ = now;
            refresh();
        }
        table = table_;
    }
    auto it = table->find(key);
    if (it == table->end() || it->second.empty()) return std::nullopt;
    return it->second;
}

void HostsFile::refresh()
{
    Identity now;
    struct stat st {};
    if (::stat(path_.c_str(), &st) == 0) {
        now.exists = true;
        now.dev = static_cast<std::uint64_t>(st.st_dev);
        now.ino = static_cast<std::uint64_t>(st.st_ino);
        now.size = static_cast<std::uint64_t>(st.st_size);
        now.mtime_sec = static_cast<std::int64_t>(st.st_mtim.tv_sec);
        now.mtime_nsec = static_cast<std::int64_t>(st.st_mtim.tv_nsec);
    }
    if (now == identity_) return;
    identity_ = now;
    if (!now.exists) {
        table_ = std::make_shared<const Table>();
        return;
    }
    // A small blocking read on the calling loop, at most once a second and only when the
    // file changed: what getaddrinfo would do on every lookup.
    std::string text;
    int fd = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        table_ = std::make_shared<const Table>();
        return;
    }
    char buf[65536];
    while (text.size() < max_size) {
        ssize_t n = ::read(fd, buf, std::min(sizeof buf, max_size - text.size()));
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        text.append(buf, static_cast<std::size_t>(n));
    }
    ::close(fd);
    table_ = std::make_shared<const Table>(parse(text));
}

// ---- Events of names, once for every loop ----------------------------------------------------

void NameEvents::outcome(const std::string& name, const std::vector<vip::Address>& addresses, const std::string& error,
                         std::string_view source)
{
    std::string message;
    Fields fields;
    bool warn = false;
    {
        std::lock_guard lock(mutex_);
        auto& last = names_[name];
        if (!error.empty()) {
            if (last.failing) return;
            last.failing = true;
            warn = true;
            message = "endpoint name does not resolve";
            fields = {{"name", name}, {"reason", error}};
            if (!last.addresses.empty()) fields.emplace_back("keeping", address_list(last.addresses));
        } else {
            auto sorted = addresses;
            std::ranges::sort(sorted);
            bool was_failing = last.failing;
            last.failing = false;
            if (!last.known || sorted != last.addresses || source != last.source) {
                message = "endpoint addresses changed";
                fields = {{"name", name}, {"old", address_list(last.addresses)}, {"new", address_list(addresses)},
                          {"source", std::string(source)}};
            } else if (was_failing) {
                message = "endpoint name resolves again";
                fields = {{"name", name}, {"addresses", address_list(addresses)}, {"source", std::string(source)}};
            }
            last.known = true;
            last.addresses = std::move(sorted);
            last.source = std::string(source);
        }
    }
    if (!message.empty() && sink_) sink_(warn, std::move(message), std::move(fields));
}

// One name being looked up: A and AAAA on one socket, one nameserver at a time.
struct Resolver::Lookup {
    Resolver* resolver = nullptr;
    std::string name;
    std::size_t server = 0;
    sockaddr_storage server_addr{};
    uv_udp_t* socket = nullptr;
    uv_timer_t* timer = nullptr;
    struct Question {
        ldns_rr_type type;
        std::uint16_t id = 0;
        bool answered = false;
        bool failed = false;  // answered with an error rcode
    };
    std::array<Question, 2> questions{Question{LDNS_RR_TYPE_A}, Question{LDNS_RR_TYPE_AAAA}};
    std::vector<vip::Address> v4, v6;
    std::uint32_t ttl = UINT32_MAX;
    bool nxdomain = false;
    std::string last_error;
    std::array<char, 4096> buffer{};

    void close_handles()
    {
        if (socket) {
            uv_udp_recv_stop(socket);
            close_and_delete(socket);
            socket = nullptr;
        }
        if (timer) {
            uv_timer_stop(timer);
            close_and_delete(timer);
            timer = nullptr;
        }
    }

    // Asks the current nameserver; past the last one, gives up.
    void ask()
    {
        close_handles();
        while (server < resolver->servers_.size()) {
            auto addr = server_address(resolver->servers_[server]);
            if (addr) {
                server_addr = *addr;
                break;
            }
            ++server;
        }
        if (server >= resolver->servers_.size()) {
            done({}, last_error.empty() ? "no nameserver to ask" : last_error);
            return;
        }
        v4.clear();
        v6.clear();
        ttl = UINT32_MAX;
        nxdomain = false;
        socket = new uv_udp_t;
        uv_udp_init(resolver->loop_, socket);
        socket->data = this;
        sockaddr_storage any{};
        if (server_addr.ss_family == AF_INET6) uv_ip6_addr("::", 0, reinterpret_cast<sockaddr_in6*>(&any));
        else uv_ip4_addr("0.0.0.0", 0, reinterpret_cast<sockaddr_in*>(&any));
        int rc = uv_udp_bind(socket, reinterpret_cast<const sockaddr*>(&any), 0);
        if (rc == 0)
            rc = uv_udp_recv_start(
                socket,
                [](uv_handle_t* h, std::size_t, uv_buf_t* buf) {
                    auto* self = static_cast<Lookup*>(h->data);
                    *buf = uv_buf_init(self->buffer.data(), static_cast<unsigned>(self->buffer.size()));
                },
                [](uv_udp_t* h, ssize_t nread, const uv_buf_t* buf, const sockaddr* from, unsigned) {
                    if (nread > 0 && from) static_cast<Lookup*>(h->data)->received(buf->base, static_cast<std::size_t>(nread), from);
                });
        for (auto& q : questions) {
            if (rc != 0) break;
            q.answered = false;
            q.failed = false;
            do q.id = static_cast<std::uint16_t>(arc4random() & 0xffff);
            while (&q != &questions[0] && q.id == questions[0].id);  // answers are told apart by ID
            auto wire = make_query(name, q.type, q.id);
            if (wire.empty()) {
                done({}, "not a valid DNS name");
                return;
            }
            uv_buf_t b = uv_buf_init(reinterpret_cast<char*>(wire.data()), static_cast<unsigned>(wire.size()));
            int sent = uv_udp_try_send(socket, &b, 1, reinterpret_cast<const sockaddr*>(&server_addr));
            if (sent < 0) rc = sent;
        }
        if (rc != 0) {
            last_error = std::string("cannot ask ") + resolver->servers_[server].to_string() + ": " + uv_strerror(rc);
            ++server;
            ask();
            return;
        }
        timer = new uv_timer_t;
        uv_timer_init(resolver->loop_, timer);
        timer->data = this;
        uv_timer_start(
            timer,
            [](uv_timer_t* t) {
                auto* self = static_cast<Lookup*>(t->data);
                self->last_error = "no answer from " + self->resolver->servers_[self->server].to_string() + " within " +
                                   std::to_string(self->resolver->timeout_.count()) + "ms";
                // One type answered and the other lost (some middleboxes drop AAAA): what
                // came is used, rather than nothing.
                if (!self->v4.empty() || !self->v6.empty()) {
                    std::vector<vip::Address> all = self->v4;
                    all.insert(all.end(), self->v6.begin(), self->v6.end());
                    self->done(std::move(all), "", true);
                    return;
                }
                ++self->server;
                self->ask();
            },
            static_cast<std::uint64_t>(resolver->timeout_.count()), 0);
    }

    void received(const char* data, std::size_t size, const sockaddr* from)
    {
        if (!same_address(from, server_addr)) return;  // not from the nameserver asked
        ldns_pkt* raw = nullptr;
        if (ldns_wire2pkt(&raw, reinterpret_cast<const std::uint8_t*>(data), size) != LDNS_STATUS_OK || !raw) return;
        std::unique_ptr<ldns_pkt, void (*)(ldns_pkt*)> pkt(raw, ldns_pkt_free);
        if (!ldns_pkt_qr(raw)) return;
        Question* q = nullptr;
        for (auto& candidate : questions)
            if (!candidate.answered && candidate.id == ldns_pkt_id(raw)) q = &candidate;
        if (!q) return;
        // The question must be the one asked, name compared case-insensitively.
        const ldns_rr_list* qs = ldns_pkt_question(raw);
        if (ldns_rr_list_rr_count(qs) != 1) return;
        const ldns_rr* question = ldns_rr_list_rr(qs, 0);
        ldns_rdf* want = ldns_dname_new_frm_str((name.ends_with('.') ? name : name + ".").c_str());
        bool same = want && ldns_rr_get_type(question) == q->type && ldns_dname_compare(ldns_rr_owner(question), want) == 0;
        ldns_rdf_deep_free(want);
        if (!same) return;

        auto rcode = ldns_pkt_get_rcode(raw);
        q->answered = true;
        if (rcode != LDNS_RCODE_NOERROR && rcode != LDNS_RCODE_NXDOMAIN) {
            // Some servers refuse one type they hold nothing of (dnsmasq: AAAA for a name
            // it has only an A for); the other type may still answer.
            char* text = ldns_pkt_rcode2str(rcode);
            last_error = resolver->servers_[server].to_string() + " answered " + (text ? text : "an error");
            free(text);
            q->failed = true;
        }
        if (rcode == LDNS_RCODE_NXDOMAIN) nxdomain = true;
        const ldns_rr_list* answers = ldns_pkt_answer(raw);
        for (std::size_t i = 0; i < ldns_rr_list_rr_count(answers); ++i) {
            const ldns_rr* rr = ldns_rr_list_rr(answers, i);
            auto type = ldns_rr_get_type(rr);
            if (type != LDNS_RR_TYPE_A && type != LDNS_RR_TYPE_AAAA) continue;  // CNAMEs are followed by the server
            if (ldns_rr_rd_count(rr) != 1) continue;
            const ldns_rdf* rd = ldns_rr_rdf(rr, 0);
            auto a = vip::Address::from_bytes(
                std::string_view(reinterpret_cast<const char*>(ldns_rdf_data(rd)), ldns_rdf_size(rd)));
            if (!a) continue;
            (type == LDNS_RR_TYPE_A ? v4 : v6).push_back(*a);
            ttl = std::min(ttl, ldns_rr_ttl(rr));
        }
        if (std::ranges::all_of(questions, [](const Question& x) { return x.answered; })) {
            std::vector<vip::Address> all = v4;
            all.insert(all.end(), v6.begin(), v6.end());
            bool any_failed = std::ranges::any_of(questions, [](const Question& x) { return x.failed; });
            if (!all.empty()) {
                done(std::move(all), "", any_failed);
            } else if (any_failed) {
                ++server;  // this server could not answer: the next one may
                ask();
            } else {
                done({}, nxdomain ? "NXDOMAIN" : "no A or AAAA records");
            }
        }
    }

    // `partial`: one type failed; the addresses of that family known before are kept.
    void done(std::vector<vip::Address> addresses, std::string error, bool partial = false)
    {
        close_handles();
        if (partial)
            if (const auto* before = resolver->find(name)) {
                bool have4 = std::ranges::any_of(addresses, [](const vip::Address& a) { return a.family == vip::Family::v4; });
                bool have6 = std::ranges::any_of(addresses, [](const vip::Address& a) { return a.family == vip::Family::v6; });
                for (const auto& a : before->addresses)
                    if ((a.family == vip::Family::v4 && !have4) || (a.family == vip::Family::v6 && !have6))
                        addresses.push_back(a);
                std::ranges::stable_sort(addresses, {}, [](const vip::Address& a) { return a.family != vip::Family::v4; });
            }
        Resolver* r = resolver;
        std::string n = name;
        std::uint32_t t = ttl;
        r->in_flight_.erase(n);
        delete this;
        r->finish(n, std::move(addresses), t, std::move(error));
    }
};

Resolver::Resolver(uv_loop_t* loop, std::vector<conf::HostPort> servers, std::chrono::milliseconds timeout,
                   std::chrono::milliseconds min_ttl, std::chrono::milliseconds max_ttl,
                   std::shared_ptr<ResolverShared> shared)
    : shared_(std::move(shared)), loop_(loop), servers_(std::move(servers)), timeout_(timeout), min_ttl_(min_ttl),
      max_ttl_(max_ttl)
{
    refresh_timer_ = new uv_timer_t;
    uv_timer_init(loop_, refresh_timer_);
    refresh_timer_->data = this;
    uv_unref(reinterpret_cast<uv_handle_t*>(refresh_timer_));
}

Resolver::~Resolver() { stop(); }

void Resolver::stop()
{
    if (stopped_) return;
    stopped_ = true;
    waiting_.clear();
    queued_.clear();
    auto lookups = std::move(in_flight_);
    for (auto& [name, lookup] : lookups) {
        lookup->close_handles();
        delete lookup;
    }
    if (refresh_timer_) {
        uv_timer_stop(refresh_timer_);
        close_and_delete(refresh_timer_);
        refresh_timer_ = nullptr;
    }
}

const Resolver::Entry* Resolver::find(const std::string& name) const
{
    auto it = entries_.find(name);
    return it == entries_.end() ? nullptr : &it->second;
}

std::vector<vip::Address> Resolver::addresses(const std::string& name) const
{
    std::lock_guard lock(published_mutex_);
    auto it = published_.find(name);
    return it == published_.end() ? std::vector<vip::Address>{} : it->second;
}

void Resolver::publish(const std::string& name, const std::vector<vip::Address>* addresses)
{
    std::lock_guard lock(published_mutex_);
    if (addresses) published_[name] = *addresses;
    else published_.erase(name);
}

bool Resolver::from_hosts(const std::string& name)
{
    if (!shared_) return false;
    auto found = shared_->hosts.lookup(name);
    if (!found) {
        if (auto it = entries_.find(name); it != entries_.end() && it->second.from_hosts) {
            it->second = Entry{};  // gone from the file: DNS from now on, as if never asked
            publish(name, nullptr);
        }
        return false;
    }
    auto& entry = entries_[name];
    if (!entry.from_hosts || entry.addresses != *found || !entry.error.empty()) {
        entry.addresses = std::move(*found);
        entry.error.clear();
        entry.failures = 0;
        entry.resolved_once = true;
        entry.from_hosts = true;
        publish(name, &entry.addresses);
        report(name, entry);
    }
    entry.expires = uv_now(loop_) + hosts_recheck_ms;
    return true;
}

void Resolver::report(const std::string& name, const Entry& entry)
{
    if (shared_) shared_->events.outcome(name, entry.addresses, entry.error, entry.from_hosts ? "hosts" : "dns");
}

void Resolver::resolve(const std::string& name, Callback done)
{
    if (stopped_) return;
    if (from_hosts(name)) {
        const auto& entry = entries_[name];
        if (watched_.contains(name) && (armed_for_ == 0 || entry.expires < armed_for_)) arm_refresh();
        done(entry);
        return;
    }
    auto& entry = entries_[name];
    std::uint64_t now = uv_now(loop_);
    bool fresh = entry.expires > now;
    if (!entry.addresses.empty() || (fresh && !entry.error.empty())) {  // stale addresses still serve
        if (!fresh) start_lookup(name);
        done(entry);
        return;
    }
    waiting_[name].push_back(std::move(done));
    start_lookup(name);
}

void Resolver::watch(const std::set<std::string>& names)
{
    if (stopped_) return;
    for (auto it = entries_.begin(); it != entries_.end();) {
        if (!names.contains(it->first) && !in_flight_.contains(it->first) && !waiting_.contains(it->first)) {
            publish(it->first, nullptr);
            it = entries_.erase(it);
        } else
            ++it;
    }
    // Names are first asked when a connection needs them (a store of many MES does not turn
    // into a burst of lookups at start); from then on they are kept fresh while watched.
    watched_ = names;
    arm_refresh();
}

void Resolver::start_lookup(const std::string& name)
{
    if (in_flight_.contains(name)) return;
    if (from_hosts(name)) {
        auto waiters = std::move(waiting_[name]);
        waiting_.erase(name);
        const auto& entry = entries_[name];
        for (auto& cb : waiters) cb(entry);
        return;
    }
    if (in_flight_.size() >= max_in_flight) {
        if (std::ranges::find(queued_, name) == queued_.end()) queued_.push_back(name);
        return;
    }
    auto* lookup = new Lookup;
    lookup->resolver = this;
    lookup->name = name;
    in_flight_[name] = lookup;
    lookup->ask();
}

void Resolver::finish(const std::string& name, std::vector<vip::Address> addresses, std::uint32_t ttl, std::string error)
{
    // The hosts file gained the name while DNS was asked: the file wins.
    bool hosts = from_hosts(name);
    auto& entry = entries_[name];
    std::uint64_t now = uv_now(loop_);
    if (!hosts && error.empty()) {
        entry.addresses = std::move(addresses);
        entry.error.clear();
        entry.failures = 0;
        auto ms = std::chrono::milliseconds(std::uint64_t{ttl} * 1000);
        ms = std::clamp(ms, min_ttl_, max_ttl_);
        entry.expires = now + static_cast<std::uint64_t>(ms.count());
        entry.resolved_once = true;
    } else if (!hosts) {
        // Asked again after the minimum TTL, doubling while it keeps failing (up to the
        // maximum), so a dead name does not cost two queries a second forever.
        entry.error = std::move(error);
        auto wait = static_cast<std::uint64_t>(min_ttl_.count()) << std::min<std::uint32_t>(entry.failures, 16);
        entry.expires = now + std::min(wait, static_cast<std::uint64_t>(max_ttl_.count()));
        ++entry.failures;
    }
    if (!hosts) {
        publish(name, &entry.addresses);
        report(name, entry);
    }
    std::uint64_t expires = entry.expires;
    auto waiters = std::move(waiting_[name]);
    waiting_.erase(name);
    for (auto& cb : waiters) cb(entry);
    while (!queued_.empty() && in_flight_.size() < max_in_flight && !stopped_) {
        auto next = queued_.front();
        queued_.erase(queued_.begin());
        start_lookup(next);
    }
    if (watched_.contains(name) && (armed_for_ == 0 || expires < armed_for_)) arm_refresh();
}

void Resolver::arm_refresh()
{
    if (stopped_ || !refresh_timer_) return;
    std::uint64_t next = UINT64_MAX;
    for (const auto& name : watched_) {
        auto it = entries_.find(name);
        if (it == entries_.end() || it->second.expires == 0 || in_flight_.contains(name)) continue;
        next = std::min(next, it->second.expires);
    }
    uv_timer_stop(refresh_timer_);
    armed_for_ = 0;
    if (next == UINT64_MAX) return;
    armed_for_ = next;
    std::uint64_t now = uv_now(loop_);
    uv_timer_start(
        refresh_timer_,
        [](uv_timer_t* t) {
            auto* self = static_cast<Resolver*>(t->data);
            self->armed_for_ = 0;
            std::uint64_t at = uv_now(self->loop_);
            for (const auto& name : self->watched_) {
                auto it = self->entries_.find(name);
                if (it != self->entries_.end() && it->second.expires != 0 && it->second.expires <= at)
                    self->start_lookup(name);
            }
            self->arm_refresh();
        },
        next > now ? next - now : 0, 0);
}

}  // namespace proxy::detail
