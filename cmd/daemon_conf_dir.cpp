// --conf-dir: a directory of resource YAML, looked at on a timer and applied to the store
// once a change has settled.
#include "cmd/daemon.hpp"

#include <algorithm>
#include <filesystem>

namespace cmd {

// What a directory of YAML looks like now: names, sizes and times of its files.
std::string fingerprint(const std::string& dir)
{
    namespace fs = std::filesystem;
    std::string out;
    std::error_code ec;
    std::vector<std::string> lines;
    for (fs::recursive_directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
        const auto& e = *it;
        // Kubernetes' `..data` and `..<timestamp>` entries: the visible links show their changes.
        if (auto name = e.path().filename().string(); !name.empty() && name.front() == '.') {
            it.disable_recursion_pending();
            continue;
        }
        auto ext = e.path().extension().string();
        if (!e.is_regular_file(ec) || (ext != ".yaml" && ext != ".yml")) continue;
        auto t = fs::last_write_time(e.path(), ec).time_since_epoch().count();
        lines.push_back(e.path().string() + " " + std::to_string(e.file_size(ec)) + " " + std::to_string(t));
    }
    std::sort(lines.begin(), lines.end());
    for (const auto& l : lines) out += l + "\n";
    return out + (ec ? "error " + ec.message() : "");
}

// Reads the conf dir until two passes in a row see the same bytes, then parses what they saw.
// A pass racing a change (a `..data` flip, an editor's rename) differs from the next and is
// dropped, so a half-old, half-new view, in which names of both versions may be missing,
// is never applied and never prunes. Empty when the directory kept changing.
std::optional<conf::LoadResult> read_conf_dir(const std::string& dir, const conf::LoadOptions& options)
{
    std::vector<std::string> paths{dir};
    auto previous = conf::read_sources(paths, options);
    for (int pass = 2; pass <= conf_dir_max_passes; ++pass) {
        auto next = conf::read_sources(paths, options);
        if (next.same_as(previous)) return conf::load_sources(next, options);
        previous = std::move(next);
    }
    return std::nullopt;
}

// Looks at the conf dir on a worker thread and, once a change has settled, reads, parses and
// writes it there too, in one transaction: 50,000 MES take seconds to parse and 20,000 a
// quarter of a second to write, and DNS is answered on the loop meanwhile (LMDB readers do not
// wait for a writer). Only a write that must grow the map is done on the loop, where no read
// is open while it grows.
void Daemon::look_at_conf_dir()
{
    if (stopping_) return;
    if (conf_pending_) {
        // No write while the routes are listed on a worker thread: a write may have to grow
        // the map, which LMDB allows only with no read open in this process.
        if (routes_building_) return;
        auto result = std::move(*conf_pending_);
        conf_pending_.reset();
        apply_conf_dir(std::move(result));
        return;
    }
    if (conf_reading_) return;
    conf_reading_ = true;
    struct Look {
        uv_work_t req{};
        Daemon* daemon = nullptr;
        std::string dir;
        conf::LoadOptions options;
        std::string seen, applied;  // in: the last look's fingerprint, the last read's
        store::Store* store = nullptr;
        store::WriteOptions write;
        bool default_generators = false;
        std::string fingerprint;    // out
        bool read = false;
        std::optional<conf::LoadResult> result;
        std::optional<store::Result<store::WriteReport>> written;  // when the result was valid
        std::chrono::milliseconds write_took{};
    };
    auto* look = new Look;
    look->daemon = this;
    look->dir = *conf_dir_;
    look->options = conf_options_;
    look->options.now = std::chrono::system_clock::now();  // for certificate expiry
    look->seen = conf_seen_;
    look->applied = conf_applied_;
    look->store = store_.get();
    look->write = write_options();
    look->default_generators = config_.default_hostname_generators;
    look->write.prune = true;
    look->write.grow_map = false;
    look->req.data = look;
    uv_queue_work(
        &loop_, &look->req,
        [](uv_work_t* req) {
            auto* l = static_cast<Look*>(req->data);
            l->fingerprint = fingerprint(l->dir);
            // Read once it looks the same as at the last look: a burst is read after it ends.
            if (l->fingerprint == l->applied || l->fingerprint != l->seen) return;
            l->read = true;
            l->result = read_conf_dir(l->dir, l->options);
            if (!l->result || !l->result->ok()) return;
            std::vector<conf::Resource> resources;
            resources.reserve(l->result->documents.size());
            for (const auto& doc : l->result->documents) resources.push_back(doc.resource);
            keep_default_generators(l->default_generators, resources);
            auto started = std::chrono::steady_clock::now();
            l->written = l->store->apply(resources, l->write);
            l->write_took = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - started);
        },
        [](uv_work_t* req, int) noexcept {
            std::unique_ptr<Look> l(static_cast<Look*>(req->data));
            Daemon* d = l->daemon;
            d->conf_reading_ = false;
            if (d->stopping_) return;
            if (l->fingerprint != d->conf_seen_ && l->fingerprint != d->conf_applied_)
                log::info("confd", "directory changed", {{"dir", l->dir}});
            d->conf_seen_ = l->fingerprint;
            if (!l->read) return;
            if (!l->result) {
                ++d->conf_dir_torn_reads_;
                log::info("confd", "directory changed while read; reading it again",
                          {{"dir", l->dir}, {"passes", std::to_string(conf_dir_max_passes)}});
                return;
            }
            d->conf_applied_ = l->fingerprint;
            try {
                if (l->written && !*l->written && l->written->error().map_full) {
                    d->conf_pending_ = std::move(l->result);  // written on the loop, growing the map
                    d->look_at_conf_dir();
                } else {
                    d->apply_conf_dir(std::move(*l->result), std::move(l->written), l->write_took);
                }
            } catch (const std::exception& e) {
                ++d->conf_dir_errors_;
                log::error("confd", "apply failed; keeping the last good state", {{"error", e.what()}});
            }
        });
}

bool Daemon::apply_conf_dir(conf::LoadResult result, std::optional<store::Result<store::WriteReport>> written,
                            std::chrono::milliseconds write_took)
{
    for (const auto& d : result.file_errors) log::warn("confd", d.format());
    for (const auto& doc : result.documents)
        for (const auto& d : doc.diagnostics)
            log::write(d.severity == conf::Severity::error ? log::Level::warn : log::Level::info, "confd", d.format());
    if (!result.ok()) {
        ++conf_dir_errors_;
        log::error("confd", "invalid resources; keeping the last good state",
                   {{"dir", *conf_dir_}, {"errors", std::to_string(result.error_count())}});
        return false;
    }
    std::size_t count = result.documents.size();
    bool on_loop = !written;
    if (on_loop) {
        std::vector<conf::Resource> resources;
        for (auto& doc : result.documents) resources.push_back(std::move(doc.resource));
        keep_default_generators(config_.default_hostname_generators, resources);
        auto options = write_options();
        options.prune = true;
        source_.release();  // a write may grow the map; no read may be open in this process then
        auto started = std::chrono::steady_clock::now();
        written = store_->apply(resources, options);
        write_took = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - started);
    }
    auto& report = *written;
    auto indexed = std::chrono::steady_clock::now();
    refresh();
    auto index_ms = std::to_string(
        std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - indexed).count());
    if (!report) {
        ++conf_dir_errors_;
        log::error("confd", "apply failed; keeping the last good state", {{"error", report.error().message}});
        // Valid input that could not be written (a full disk, a busy store) is read and
        // written again at the next look, not only once the directory changes.
        conf_applied_.clear();
        return false;
    }
    ++conf_dir_applies_;
    std::size_t changed = 0;
    for (const auto& c : report->changes) {
        if (c.outcome == store::Outcome::unchanged) continue;
        ++changed;
        log::info("confd", std::string(store::outcome_name(c.outcome)),
                  {{"kind", std::string(conf::kind_name(c.kind))}, {"mesh", c.mesh}, {"name", c.name}});
    }
    for (const auto& n : report->notes) log::warn("store", n);
    log::info("confd", "applied", {{"dir", *conf_dir_}, {"resources", std::to_string(count)},
                                   {"changed", std::to_string(changed)}, {"generation", std::to_string(report->generation)},
                                   {"write_ms", std::to_string(write_took.count())}, {"write_on", on_loop ? "loop" : "worker"},
                                   {"index_ms", index_ms}});
    return true;
}

}  // namespace cmd
