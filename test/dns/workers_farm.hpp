// Several dns::Server on workers::Worker loops, set up as the daemon sets them up: one store,
// the control StoreSource publishing its catalogs, each worker's CatalogSource, one
// SharedLimits, the first server choosing the ports and the others joining them. Shared by the
// DNS workers' tests.
#pragma once

#include "dns/dns.hpp"
#include "workers/worker.hpp"

#include "test/support/net.hpp"
#include "test/support/resources.hpp"
#include "test/support/temp_store.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <array>
#include <atomic>
#include <memory>
#include <string>
#include <vector>

namespace workers_farm {

constexpr std::size_t worker_count = 4;

// A store, the control StoreSource publishing its catalogs, and `worker_count` workers each
// running a Server over a CatalogSource of its own.
struct Farm {
    test_support::StoreFixture store;
    std::unique_ptr<dns::StoreSource> control;
    dns::Responder responder{dns::Settings{}};
    std::shared_ptr<dns::SharedLimits> limits;
    std::vector<std::unique_ptr<workers::Worker>> workers;
    std::vector<std::unique_ptr<dns::CatalogSource>> sources;
    std::vector<std::unique_ptr<dns::Server>> servers;
    int port = 0;   // on 127.0.0.1
    int port6 = 0;  // on ::1, when listened on
    bool running = false;

    explicit Farm(dns::ServerOptions options = {}, std::vector<conf::Resource> resources = {})
    {
        resources.insert(resources.begin(), test_support::make_generator("example", "{{ .Name }}.mesh"));
        if (resources.size() == 1) resources.push_back(test_support::make_mes("mes-a"));
        apply(resources);
        control = std::make_unique<dns::StoreSource>(*store.db, std::vector<std::string>{"default"});
        auto first = control->refresh();
        REQUIRE(first.has_value());

        options.reuse_port = true;
        // Nothing to forward to: the servers answer from the store alone.
        if (options.upstreams.empty() && options.resolv_conf.empty()) options.forward_enabled = false;
        if (options.listen.empty()) options.listen = {conf::HostPort{"127.0.0.1", 0}, conf::HostPort{"::1", 0}};
        if (options.allow.empty()) options.allow = {"127.0.0.0/8", "::1/128"};
        limits = std::make_shared<dns::SharedLimits>(options);
        options.shared = limits;
        for (std::size_t i = 0; i < worker_count; ++i) {
            workers.push_back(std::make_unique<workers::Worker>(i, std::nullopt));
            sources.push_back(std::make_unique<dns::CatalogSource>(*store.db, control->shared()));
            // Set up on this thread before the worker's thread runs, as the daemon binds.
            servers.push_back(std::make_unique<dns::Server>(workers[i]->loop(), responder, *sources[i], options));
            auto started = servers[i]->start();
            INFO((started ? std::string() : started.error()));
            REQUIRE(started.has_value());
            if (i == 0) {
                // The first server chose the ports; the others are given its bound addresses.
                REQUIRE(servers[0]->bound().size() == options.listen.size());
                options.listen.clear();
                for (const auto& b : servers[0]->bound()) {
                    auto bound = conf::parse_host_port(b);
                    REQUIRE(bound);
                    options.listen.push_back(*bound);
                }
                port = options.listen[0].port;
                if (options.listen.size() > 1) port6 = options.listen[1].port;
            }
            CHECK(servers[i]->bound() == servers[0]->bound());
        }
        for (auto& w : workers) w->start();
        running = true;
    }
    ~Farm() { stop(); }
    Farm(const Farm&) = delete;
    Farm& operator=(const Farm&) = delete;

    void apply(const std::vector<conf::Resource>& resources)
    {
        auto r = store.db->apply(resources, store.options);
        INFO((r ? std::string() : r.error().message));
        REQUIRE(r.has_value());
    }
    // What the control loop does on a store change: a new catalog for every worker.
    void publish()
    {
        auto moved = control->refresh();
        REQUIRE(moved.has_value());
        REQUIRE(*moved);
    }
    std::string address_of(const std::string& name)
    {
        auto found = control->find_addresses(name);
        REQUIRE(found);
        REQUIRE(found->ipv4);
        return found->ipv4->to_string();
    }

    // The workers' metrics summed, as the daemon's /metrics will sum them.
    dns::Metrics total() const
    {
        dns::Metrics sum;
        for (const auto& s : servers) sum += s->metrics();
        return sum;
    }
    std::vector<std::uint64_t> answered_each() const
    {
        std::vector<std::uint64_t> out;
        for (const auto& s : servers) out.push_back(s->metrics().answered);
        return out;
    }

    std::size_t in_flight() const
    {
        std::size_t n = 0;
        for (const auto& s : servers) n += s->in_flight();
        return n;
    }
    // How many servers counted something in `field` (the queries did spread over workers).
    template <class Field>
    std::size_t servers_with(Field field) const
    {
        return static_cast<std::size_t>(std::ranges::count_if(servers, [&](const auto& s) { return field(s->metrics()) > 0; }));
    }
    // Every server's view of the upstreams, as addresses, best first.
    bool every_server_lists(const std::vector<std::string>& addresses) const
    {
        return std::ranges::all_of(servers, [&](const auto& s) {
            std::vector<std::string> listed;
            for (const auto& u : s->upstreams()) listed.push_back(u.address);
            return listed == addresses;
        });
    }

    // Every server stopped on its own loop's thread; true when each said it was done and
    // each loop ended.
    bool stop()
    {
        if (!running) return true;
        running = false;
        auto stopped = std::make_shared<std::array<std::atomic<bool>, worker_count>>();
        for (std::size_t i = 0; i < workers.size(); ++i)
            workers[i]->post([server = servers[i].get(), stopped, i] { server->stop([stopped, i] { (*stopped)[i] = true; }); });
        bool all = test_support::eventually([&] { return std::ranges::all_of(*stopped, [](const auto& s) { return s.load(); }); });
        for (auto& w : workers) w->finish();
        if (all)
            for (auto& w : workers) w->join();  // returns once the loop ran out of handles
        return all;
    }
};

}  // namespace workers_farm
