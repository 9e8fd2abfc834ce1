// Cluster mode: the check that the store may be mirrored into, the mirror's start and what
// /ready says of it.
#include "cmd/daemon.hpp"

#include <span>

namespace cmd {

bool Daemon::cluster_store_usable()
{
    auto snap = store_->snapshot();
    if (!snap) {
        log::error("cluster", "cannot read the store", {{"error", snap.error().message}});
        return false;
    }
    auto recorded = snap->mirror_state();
    if (!recorded) {
        log::error("cluster", "cannot read the store", {{"error", recorded.error().message}});
        return false;
    }
    if (recorded->revision > 0) return true;  // a copy of etcd already
    // The store's own resources would be replaced by etcd's: refuse, rather than lose them.
    // Counted from the database's statistics, not by reading every record.
    snap = std::unexpected(store::Error{});
    auto usage = store_->usage();
    if (!usage) {
        log::error("cluster", "cannot read the store", {{"error", usage.error().message}});
        return false;
    }
    if (usage->resources > 0) {
        log::error("cluster", "the store holds resources written in single-node mode; copy them into etcd with "
                              "`mesctl cluster import` first, or start with an empty data dir",
                   {{"data_dir", config_.data_dir}, {"resources", std::to_string(usage->resources)}});
        return false;
    }
    return true;
}

void Daemon::start_mirror()
{
    uv_async_init(&loop_, &mirror_changed_, [](uv_async_t* a) { static_cast<Daemon*>(a->data)->refresh(); });
    mirror_changed_.data = this;
    mirror_changed_open_ = true;
    store::cluster::Mirror::Hooks hooks;
    hooks.changed = [this] {
        std::lock_guard lock(mirror_changed_mutex_);
        if (mirror_changed_open_) uv_async_send(&mirror_changed_);
    };
    hooks.log = [](store::cluster::Mirror::Hooks::Level level, std::string_view message,
                   const store::cluster::Mirror::Hooks::Fields& fields) {
        std::vector<log::Field> out;
        for (const auto& [k, v] : fields) out.emplace_back(k, v);
        using L = store::cluster::Mirror::Hooks::Level;
        auto lv = level == L::info ? log::Level::info : level == L::warn ? log::Level::warn : log::Level::error;
        log::write(lv, "cluster", message, std::span<const log::Field>(out));
    };
    mirror_ = std::make_unique<store::cluster::Mirror>(*store_, config_, std::move(hooks));
    std::string endpoints;
    for (const auto& e : config_.cluster.etcd.endpoints) endpoints += (endpoints.empty() ? "" : ",") + e;
    log::info("cluster", "node of a cluster",
              {{"node", config_.cluster.node_name}, {"etcd", endpoints}, {"prefix", config_.cluster.etcd.prefix},
               {"revision", std::to_string(mirror_->state().revision)}});
    // Kuma's default generators, created in etcd by whichever node finds them absent first,
    // at every node's start, as Kuma's control plane creates its defaults at each start.
    if (config_.default_hostname_generators) mirror_->create_at_start(conf::default_hostname_generators());
    mirror_->start();
}

std::string Daemon::cluster_ready_text() const
{
    if (!mirror_) return {};
    auto st = mirror_->state();
    if (!st.synced) return "not ready: waiting for the first copy from etcd";
    if (st.connected) return "ready";
    return "ready: serving from cache (etcd unreachable" + (st.last_error.empty() ? "" : ": " + st.last_error) +
           "; revision " + std::to_string(st.revision) + ")";
}

}  // namespace cmd
