// Active health checks (proxy.healthCheck, the label mesd.io/health-check): every interval,
// each address of each endpoint of a checked MES gets a TCP connect (a unix socket's connect
// for those), then a TLS handshake where the MES originates TLS, verified as connections
// verify theirs. Results go to the endpoint's AddressHealth (balancer.hpp): unhealthyThreshold
// failures in a row take an address out of the choice, healthyThreshold passes bring it back.
//
// Threads. Everything runs on the control loop: one set of checks whatever the number of
// workers. A DNS name is resolved by the first loop's resolver (posted there; the answer comes
// back through Impl::on_control). The service's mutex is taken only to read the route and to
// record a result, never across I/O.
#pragma once

#include "proxy/detail/balancer.hpp"

#include <uv.h>

#include <cstddef>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

namespace proxy {

struct HealthProbe;

class HealthChecker {
public:
    explicit HealthChecker(Proxy::Impl& impl) : impl_(impl) {}
    ~HealthChecker();
    HealthChecker(const HealthChecker&) = delete;
    HealthChecker& operator=(const HealthChecker&) = delete;

    // Arms the round timer on the control loop (it does not keep the loop running).
    void start();
    // Stops the timer and abandons checks under way; `Impl::closing_checks` counts the
    // handles still closing.
    void stop();
    // Whether `routing`'s MES is checked.
    bool enabled_for(const Routing& routing) const;

    // A probe's end: records the result and lets the probe go. Control loop.
    void finished(HealthProbe* p, bool passed, const std::string& error);

private:
    void round();
    void check_name(std::shared_ptr<Service> service, std::shared_ptr<const Target> target);
    void probe(std::shared_ptr<Service> service, std::shared_ptr<const Routing> routing, std::shared_ptr<const Target> target,
               std::optional<vip::Address> address);

    Proxy::Impl& impl_;
    uv_timer_t* timer_ = nullptr;
    bool stopped_ = false;
    std::set<HealthProbe*> probes_;
};

}  // namespace proxy
