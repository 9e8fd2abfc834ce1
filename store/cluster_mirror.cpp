// cluster: mesd's copy of etcd (see cluster.hpp). Two threads, each with a client of its
// own: the watcher applies etcd's events to the store in revision order, one store write per
// watch response, and the heart keeps the node's registration alive and notices when etcd
// stops answering a watch that looks open.
#include "store/cluster.hpp"

#include <nlohmann/json.hpp>

#include <malloc.h>
#include <unistd.h>

#include <algorithm>
#include <condition_variable>
#include <map>
#include <mutex>
#include <thread>

namespace store::cluster {

namespace {

using Clock = std::chrono::system_clock;
using Level = Mirror::Hooks::Level;

constexpr auto node_lease_ttl = std::chrono::seconds(10);
constexpr auto heartbeat_every = std::chrono::seconds(2);
constexpr auto first_backoff = std::chrono::milliseconds(200);
constexpr auto max_backoff = std::chrono::seconds(5);
// A store write that fails (the map being grown while a read is open) is tried again this
// often before the watch is given up and started again from the recorded revision.
constexpr int write_attempts = 50;
constexpr auto write_retry = std::chrono::milliseconds(100);
// Events held back during a burst wait at most hold_max; the watch looks for a due write
// every idle_every while no response comes.
constexpr auto hold_min = std::chrono::milliseconds(10);
constexpr auto hold_max = std::chrono::milliseconds(2000);
constexpr auto idle_every = std::chrono::milliseconds(10);
constexpr std::string_view local_failure = "cannot write the local copy: ";

std::int64_t unix_ms(Clock::time_point t)
{
    return std::chrono::duration_cast<std::chrono::milliseconds>(t.time_since_epoch()).count();
}

std::string host_name()
{
    char buf[256] = {};
    if (gethostname(buf, sizeof buf - 1) != 0 || !buf[0]) return "mesd";
    return buf;
}

}  // namespace

struct Mirror::Impl {
    Store& store;
    Layout layout;
    etcd::Options options;
    Pools pools;
    std::string zone;  // config `zone`, for {{ .Zone }}
    Hooks hooks;
    std::string node_name;
    Clock::time_point started = Clock::now();

    mutable std::mutex mutex;  // guards state, the clients' pointers and the flags below
    std::condition_variable wake;
    State state;
    bool stopping = false;
    bool reconnect = false;  // the heart asks the watcher to start over
    bool loss_logged = false;  // "unreachable" said since the last connection
    etcd::Client* watch_client = nullptr;
    etcd::Client* heart_client = nullptr;
    std::thread watcher, heart;
    // The heart's own once started (set before): what create_at_start() asked for, emptied
    // once done, and the failure last logged.
    std::vector<conf::Resource> at_start;
    std::string at_start_failure;

    Impl(Store& s, const conf::Config& config, Hooks h)
        : store(s), layout(config.cluster.etcd.prefix), options(client_options(config)), pools(Pools::from(config)), zone(config.zone),
          hooks(std::move(h)), node_name(config.cluster.node_name.empty() ? host_name() : config.cluster.node_name)
    {
    }

    void log(Level level, std::string_view message, const Hooks::Fields& fields) const
    {
        if (hooks.log) hooks.log(level, message, fields);
    }

    bool sleep(std::chrono::milliseconds d)
    {
        std::unique_lock lock(mutex);
        return !wake.wait_for(lock, d, [&] { return stopping; });
    }

    bool stopped() const
    {
        std::lock_guard lock(mutex);
        return stopping;
    }

    void lost(const std::string& why)
    {
        bool say;
        std::int64_t revision;
        {
            std::lock_guard lock(mutex);
            say = !loss_logged;
            loss_logged = true;
            state.connected = false;
            ++state.errors;
            state.last_error = why;
            revision = state.revision;
        }
        if (say)
            log(Level::warn, "etcd unreachable; serving from the local copy",
                {{"error", why}, {"revision", std::to_string(revision)}});
    }

    void connected(const std::string& endpoint, std::int64_t revision)
    {
        bool was;
        {
            std::lock_guard lock(mutex);
            was = state.connected;
            loss_logged = false;
            state.connected = true;
            state.synced = true;
            state.endpoint = endpoint;
            state.revision = std::max(state.revision, revision);
            state.current_at = Clock::now();
        }
        if (!was) log(Level::info, "etcd connected", {{"endpoint", endpoint}, {"revision", std::to_string(revision)}});
    }

    // Writes one batch into the store, trying again while the map is being grown elsewhere.
    Result<WriteReport> write(const MirrorBatch& batch)
    {
        // A large batch's decoded resources and etcd's JSON were allocated on this thread's
        // own malloc arena: hand the pages back once written, as the loop does after an index
        // rebuild, or a node would keep more memory than a single-node mesd serving the same.
        struct Trim {
            bool large;
            ~Trim()
            {
                if (large) malloc_trim(0);
            }
        } trim{batch.puts.size() + batch.removals.size() >= 1000};
        WriteOptions o;
        o.pools = pools;
        o.zone = zone;
        Result<WriteReport> r = std::unexpected(Error{"not written"});
        for (int attempt = 0; attempt < write_attempts && !stopped(); ++attempt) {
            r = store.mirror(batch, o);
            if (r) break;
            std::this_thread::sleep_for(write_retry);
        }
        if (r && hooks.changed) hooks.changed();  // the loop reads the generation and sees whether it moved
        return r;
    }

    std::string source(const etcd::MemberStatus& status) const
    {
        return "etcd cluster " + std::to_string(status.cluster_id) + " prefix " + layout.prefix();
    }

    // Reads every resource at one revision and replaces the store's copy with it in one
    // write: a node never serves half of an old state and half of a new one.
    Result<std::int64_t> resync(etcd::Client& client, const std::string& src, const std::string& why)
    {
        auto began = std::chrono::steady_clock::now();
        log(Level::info, "reading the whole state from etcd", {{"reason", why}});
        MirrorBatch batch;
        batch.replace = true;
        batch.source = src;
        etcd::RangeRequest req;
        req.key = layout.resources();
        req.range_end = etcd::prefix_end(req.key);
        req.limit = 2000;
        std::size_t undecodable = 0;
        for (;;) {
            auto page = client.range(req);
            // A page too large for one response (large Secrets) is asked again at half the size.
            if (!page && !page.error().unavailable && req.limit > 1) {
                req.limit /= 2;
                continue;
            }
            if (!page) return std::unexpected(Error{page.error().message});
            if (req.revision == 0) req.revision = page->revision;
            for (const auto& kv : page->kvs) {
                auto key = layout.parse_resource(kv.key);
                auto e = key ? decode_value(kv.value, *key, kv.create_revision) : std::nullopt;
                if (!e) {
                    ++undecodable;
                    continue;
                }
                batch.puts.push_back(std::move(*e));
            }
            if (!page->more || page->kvs.empty()) break;
            req.key = page->kvs.back().key + '\0';
        }
        batch.revision = req.revision;
        auto written = write(batch);
        if (!written) return std::unexpected(Error{std::string(local_failure) + written.error().message});
        if (undecodable > 0)
            log(Level::warn, "etcd holds values mesd cannot read; left out", {{"keys", std::to_string(undecodable)}});
        {
            std::lock_guard lock(mutex);
            ++state.resyncs;
            state.revision = batch.revision;
            state.synced = true;
        }
        auto took = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - began);
        log(Level::info, "local copy replaced from etcd",
            {{"resources", std::to_string(batch.puts.size())}, {"revision", std::to_string(batch.revision)},
             {"took_ms", std::to_string(took.count())}});
        return batch.revision;
    }

    // Follows etcd on one client until it fails or the mirror stops.
    Result<void> follow(etcd::Client& client, bool& was_live)
    {
        auto status = client.status();
        if (!status) return std::unexpected(Error{status.error().message});
        std::string src = source(*status);
        auto snap = store.snapshot();
        if (!snap) return std::unexpected(snap.error());
        auto recorded = snap->mirror_state();
        snap = std::unexpected(Error{});  // no read view stays open while the mirror writes
        if (!recorded) return std::unexpected(recorded.error());

        std::int64_t applied = recorded->revision;
        if (applied == 0 || recorded->source != src) {
            auto r = resync(client, src, applied == 0 ? "no copy yet" : "the store was copied from " + recorded->source);
            if (!r) return std::unexpected(r.error());
            applied = *r;
        }
        // Events wait in `pending` while a burst goes on: each store write recomputes the
        // hostnames of the meshes it touches, so one write per watch response would cost a
        // node more than the writer spends on etcd. A write is due when the time since the
        // last one ended is twice what that one took (at least hold_min): a lone change is
        // written at once, a burst in a few large writes, and the store's writer stays under
        // a third of its thread's time.
        struct Pending {
            std::map<std::string, etcd::WatchEvent> events;
            std::int64_t revision = 0;
        } pending;
        auto hold = hold_min;
        auto last_write_end = std::chrono::steady_clock::time_point{};
        std::string failure;
        auto flush_due = [&] { return std::chrono::steady_clock::now() - last_write_end >= hold; };
        auto flush = [&] {
            MirrorBatch batch;
            batch.source = src;
            batch.revision = pending.revision;
            for (auto& [key_text, ev] : pending.events) {
                auto key = layout.parse_resource(key_text);
                if (ev.type == etcd::WatchEvent::Type::remove) {
                    batch.removals.push_back(*key);
                } else if (auto e = decode_value(ev.kv.value, *key, ev.kv.create_revision)) {
                    batch.puts.push_back(std::move(*e));
                } else {
                    log(Level::warn, "etcd holds a value mesd cannot read; left out", {{"key", key_text}});
                }
            }
            auto began = std::chrono::steady_clock::now();
            auto written = write(batch);
            last_write_end = std::chrono::steady_clock::now();
            hold = std::clamp(std::chrono::duration_cast<std::chrono::milliseconds>(2 * (last_write_end - began)),
                              hold_min, hold_max);
            if (!written) {
                failure = std::string(local_failure) + written.error().message;
                return false;
            }
            applied = pending.revision;
            pending = Pending{};
            std::lock_guard lock(mutex);
            state.revision = applied;
            ++state.batches;
            return true;
        };
        for (;;) {
            bool compacted = false;
            pending = Pending{};
            auto on_response = [&](const etcd::WatchResponse& resp) {
                if (resp.canceled || resp.compact_revision > 0) {
                    compacted = resp.compact_revision > 0 || resp.cancel_reason.find("compacted") != std::string::npos;
                    if (!compacted) failure = "watch canceled: " + resp.cancel_reason;
                    return false;
                }
                if (resp.created) {
                    was_live = true;
                    connected(client.endpoint(), applied);
                    return !stopped();
                }
                std::int64_t last = std::max(applied, pending.revision);
                for (const auto& ev : resp.events) {
                    last = std::max(last, ev.kv.mod_revision);
                    // Of several events on one key, the last says what it holds now.
                    if (layout.parse_resource(ev.kv.key)) pending.events[ev.kv.key] = ev;
                }
                {
                    std::lock_guard lock(mutex);
                    state.current_at = Clock::now();
                }
                if (pending.events.empty()) {
                    applied = last;  // nothing of ours changed: VIP claims, quarantine, nodes
                    std::lock_guard lock(mutex);
                    state.revision = applied;
                    return !stopping;
                }
                pending.revision = last;
                if (!flush_due()) return !stopped();
                return flush() && !stopped();
            };
            auto on_idle = [&] {
                if (!pending.events.empty() && flush_due() && !flush()) return false;
                std::lock_guard lock(mutex);
                if (reconnect) {
                    reconnect = false;
                    failure = "etcd stopped answering the node's heartbeat";
                    return false;
                }
                if (state.connected) state.current_at = Clock::now();
                return !stopping;
            };
            std::string watched = layout.prefix();
            auto r = client.watch(watched, etcd::prefix_end(watched), applied + 1, on_response, idle_every, on_idle);
            if (stopped()) return {};
            if (!r) return std::unexpected(Error{r.error().message});
            if (compacted) {
                auto again = resync(client, src, "etcd compacted its history past revision " + std::to_string(applied));
                if (!again) return std::unexpected(again.error());
                applied = *again;
                continue;
            }
            if (!failure.empty()) return std::unexpected(Error{failure});
            return std::unexpected(Error{"the watch ended"});
        }
    }

    // The client options with the endpoints rotated to start at `first`: a watch that
    // failed on one member starts over on the next.
    etcd::Options rotated(std::size_t first) const
    {
        etcd::Options o = options;
        if (!o.endpoints.empty())
            std::rotate(o.endpoints.begin(), o.endpoints.begin() + static_cast<std::ptrdiff_t>(first % o.endpoints.size()),
                        o.endpoints.end());
        return o;
    }

    void watch_loop()
    {
        auto backoff = std::chrono::milliseconds(first_backoff);
        std::size_t first = 0;
        while (!stopped()) {
            auto client = etcd::Client::connect(rotated(first++));
            if (!client) {
                lost(describe(options, client.error()));
            } else {
                {
                    std::lock_guard lock(mutex);
                    watch_client = client->get();
                    reconnect = false;
                }
                bool was_live = false;
                auto r = follow(**client, was_live);
                {
                    std::lock_guard lock(mutex);
                    watch_client = nullptr;
                }
                if (stopped()) break;
                if (!r && r.error().message.starts_with(local_failure)) {
                    // Not etcd's doing: the store cannot take what etcd holds. Said as such,
                    // and tried again from the recorded revision.
                    log(Level::error, "cannot write the local copy; retrying", {{"error", r.error().message}});
                    std::lock_guard lock(mutex);
                    ++state.errors;
                    state.last_error = r.error().message;
                } else {
                    lost(r ? std::string("the watch ended") : r.error().message);
                }
                if (was_live) {
                    backoff = first_backoff;  // a watch that worked starts the backoff over
                    --first;                  // and the member that served it is tried first again
                }
            }
            if (!sleep(backoff)) break;
            backoff = std::min<std::chrono::milliseconds>(backoff * 2, max_backoff);
        }
    }

    std::string node_record() const
    {
        std::lock_guard lock(mutex);
        nlohmann::json j;
        j["revision"] = state.revision;
        j["updated"] = unix_ms(Clock::now());
        j["started"] = unix_ms(started);
        j["connected"] = state.connected;
        return j.dump();
    }

    // Creates what create_at_start() named where etcd lacks it; on failure says so (once
    // per reason) and leaves it for the next beat.
    void create_at_start_now(etcd::Client& client)
    {
        auto created = create_absent(client, layout, at_start);
        if (!created) {
            if (stopped()) return;  // the stop interrupted it: nothing to say
            if (created.error().message != at_start_failure)
                log(Level::warn, "cannot create the default resources in etcd; trying again at the next beat",
                    {{"error", created.error().message}});
            at_start_failure = created.error().message;
            return;
        }
        for (const auto& k : *created)
            log(Level::info, "default resource created in etcd",
                {{"kind", std::string(conf::kind_name(k.kind))}, {"mesh", k.mesh}, {"name", k.name}});
        if (created->size() < at_start.size())
            log(Level::info, "default resources already in etcd; left as they are",
                {{"count", std::to_string(at_start.size() - created->size())}});
        at_start.clear();
        at_start_failure.clear();
    }

    void heart_loop()
    {
        std::int64_t lease = 0;
        int failures = 0;
        std::string refused;  // the refusal last logged
        std::unique_ptr<etcd::Client> client;
        while (!stopped()) {
            std::optional<etcd::Error> error;
            if (!client) {
                auto c = etcd::Client::connect(options);
                if (c) {
                    client = std::move(*c);
                    std::lock_guard lock(mutex);
                    heart_client = client.get();
                } else {
                    error = c.error();
                }
            }
            if (client) {
                if (lease != 0) {
                    auto ttl = client->lease_keepalive(lease);
                    if (!ttl) error = ttl.error();
                    else if (*ttl == 0) lease = 0;  // expired while etcd was away
                }
                if (!error && lease == 0) {
                    auto granted = client->lease_grant(node_lease_ttl);
                    if (granted) lease = *granted;
                    else error = granted.error();
                }
                if (!error) {
                    auto put = client->put(layout.node(node_name), node_record(), lease);
                    if (!put) error = put.error();
                }
                // After a registration etcd took: etcd is there and takes this node's writes.
                // Here rather than on the watcher, whose resync and events a slow etcd would
                // hold back; a beat is bounded by the request timeout either way.
                if (!error && !at_start.empty()) create_at_start_now(*client);
            }
            if (error && !error->unavailable && error->message != refused) {
                // etcd answered, and refused: the registration is what fails, not the watch.
                log(Level::warn, "cannot register the node in etcd", {{"error", error->message}});
                refused = error->message;
            } else if (!error) {
                refused.clear();
            }
            if (!error || !error->unavailable) {
                failures = 0;
            } else if (++failures == 2) {
                // Two beats lost: a watch that still looks open is no longer trusted (a member
                // cut off from the others keeps its streams open but delivers nothing).
                std::lock_guard lock(mutex);
                reconnect = true;
                if (watch_client) watch_client->interrupt();
            }
            if (error && client) {
                std::lock_guard lock(mutex);
                heart_client = nullptr;
                client.reset();
            }
            if (!sleep(std::chrono::duration_cast<std::chrono::milliseconds>(heartbeat_every))) break;
        }
        // The node leaves the list at once, through a client of its own with a short deadline
        // (the heart's own may have been interrupted for the stop).
        if (lease != 0) {
            etcd::Options quick = options;
            quick.dial_timeout = std::min(quick.dial_timeout, std::chrono::milliseconds(500));
            quick.request_timeout = std::min(quick.request_timeout, std::chrono::milliseconds(1000));
            if (auto c = etcd::Client::connect(quick)) (void)(*c)->lease_revoke(lease);
        }
        std::lock_guard lock(mutex);
        heart_client = nullptr;
    }
};

Mirror::Mirror(Store& store, const conf::Config& config, Hooks hooks)
    : impl_(std::make_unique<Impl>(store, config, std::move(hooks)))
{
    auto snap = store.snapshot();
    if (snap)
        if (auto recorded = snap->mirror_state(); recorded && recorded->revision > 0) {
            impl_->state.revision = recorded->revision;
            impl_->state.synced = true;
        }
}

Mirror::~Mirror() { stop(); }

void Mirror::create_at_start(std::vector<conf::Resource> resources) { impl_->at_start = std::move(resources); }

void Mirror::start()
{
    impl_->watcher = std::thread([this] { impl_->watch_loop(); });
    impl_->heart = std::thread([this] { impl_->heart_loop(); });
}

void Mirror::stop()
{
    {
        std::lock_guard lock(impl_->mutex);
        if (impl_->stopping) return;
        impl_->stopping = true;
        if (impl_->watch_client) impl_->watch_client->interrupt();
        if (impl_->heart_client) impl_->heart_client->interrupt();
    }
    impl_->wake.notify_all();
    if (impl_->watcher.joinable()) impl_->watcher.join();
    if (impl_->heart.joinable()) impl_->heart.join();
}

Mirror::State Mirror::state() const
{
    std::lock_guard lock(impl_->mutex);
    return impl_->state;
}

}  // namespace store::cluster
