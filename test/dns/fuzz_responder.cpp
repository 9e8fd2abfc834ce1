// libFuzzer target: any bytes into the responder, as a UDP or TCP client allowed to forward
// or not. The responder must never crash, never read out of bounds, and either drop the
// packet or produce a reply that starts with a DNS header carrying the query's ID, and the
// fast path must agree with the general (ldns) path on what to do and the rcode.
#include "dns/dns.hpp"

#include <cstdlib>
#include <map>

namespace {

class FuzzSource : public dns::Source {
public:
    std::optional<dns::Owner> find_name(std::string_view name) override
    {
        if (name == "mes-http.mesh" || name == "both.mesh")
            return dns::Owner{"default", std::string(name.substr(0, name.find('.'))), vip::Address::parse("127.242.0.3"),
                              name == "both.mesh" ? vip::Address::parse("fd00::3") : std::nullopt};
        return std::nullopt;
    }
    std::optional<dns::Owner> find_vip(const vip::Address& a) override
    {
        if (a == *vip::Address::parse("127.242.0.3")) return find_name("mes-http.mesh");
        return std::nullopt;
    }
    std::vector<std::string> hostnames_of(const dns::Owner&) override { return {"mes-http.alt.mesh", "mes-http.mesh"}; }
    std::vector<std::string> describe(const dns::Owner& o) override
    {
        return {"mes=default/" + o.name, "port=80", "protocol=http", std::string(300, 'e'), "tls=disabled"};
    }
    // What the fast path reads: the same facts and names, as StoreSource keeps them.
    Txt txt_rdata(std::string_view name) override
    {
        auto owner = find_name(name);
        if (!owner) return {Found::no, {}};
        auto& kept = txt[std::string(name)];
        if (kept.empty())
            for (const auto& fact : describe(*owner)) {
                auto text = fact.substr(0, 255);
                kept.push_back(static_cast<std::uint8_t>(text.size()));
                kept.insert(kept.end(), text.begin(), text.end());
            }
        return {Found::yes, kept};
    }
    Hostnames vip_hostnames(const vip::Address& a, std::span<std::string_view> out) override
    {
        if (!find_vip(a)) return {Found::no, 0};
        if (out.size() < names.size()) return {};
        for (std::size_t i = 0; i < names.size(); ++i) out[i] = names[i];
        return {Found::yes, names.size()};
    }
    bool in_pool(const vip::Address& a) override { return pool.contains(a); }
    std::vector<vip::Pool> pools() override { return {pool}; }
    std::size_t reverse_apex_labels(const vip::Address& a) override
    {
        if (!pool.contains(a)) return 0;
        return pool.family() == vip::Family::v4 ? pool.prefix() / 8 + 2 : pool.prefix() / 4 + 2;
    }
    bool has_names_below(std::string_view name) override { return name == "mesh"; }
    std::map<std::string, std::vector<std::uint8_t>> txt;
    std::vector<std::string> names = hostnames_of(dns::Owner{});
    std::uint32_t serial() override { return 1; }
    vip::Pool pool = *vip::Pool::parse("127.242.0.0/16");
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size)
{
    static FuzzSource source;
    static const dns::Responder responder(dns::Settings{});
    static const dns::Responder general = [] {
        dns::Settings s;
        s.fast_path = false;
        return dns::Responder(s);
    }();
    std::span<const std::uint8_t> query(data, size);
    for (bool tcp : {false, true}) {
        auto r = responder.respond(query, dns::Client{tcp, size % 2 == 0}, source);
        if (r.action == dns::Action::reply) {
            if (r.wire.size() < 12 || r.wire[0] != data[0] || r.wire[1] != data[1]) std::abort();
            if (!tcp && r.wire.size() > 1232) std::abort();
        }
        if (r.action != dns::Action::drop && size < 12) std::abort();
        // Differential: the hand-written fast path and the ldns path agree on the outcome.
        auto g = general.respond(query, dns::Client{tcp, size % 2 == 0}, source);
        if (r.action != g.action || r.rcode != g.rcode) std::abort();
        if (r.action == dns::Action::reply && (r.wire[6] != g.wire[6] || r.wire[7] != g.wire[7])) std::abort();  // ANCOUNT
        // TXT and PTR answers are the same bytes on both paths.
        if (r.action == dns::Action::reply && (g.qtype == 16 || g.qtype == 12) && (g.wire[6] || g.wire[7]) && r.wire != g.wire)
            std::abort();
    }
    if (size >= 12) (void)responder.error_reply(query, 2, 512);
    return 0;
}
