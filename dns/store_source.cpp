// Where the responder's answers come from: catalogs built from the store, kept by the control
// loop's StoreSource and handed to the workers' CatalogSources through a SharedCatalog.
#include "dns/dns.hpp"

#include <malloc.h>

#include <algorithm>

namespace dns {

// ---- SharedCatalog ----------------------------------------------------------------------------

void SharedCatalog::publish(std::shared_ptr<const Catalog> catalog)
{
    std::shared_ptr<const Catalog> old;
    {
        std::lock_guard lock(mutex_);
        old = std::exchange(catalog_, std::move(catalog));
        // Moved under the lock, so that current() reads a catalog and its version together;
        // release: a reader that sees the new version sees everything built before it.
        version_.fetch_add(1, std::memory_order_release);
    }
    // `old` is let go here, outside the lock; it is freed now unless a worker still holds it.
}

std::pair<std::shared_ptr<const Catalog>, std::uint64_t> SharedCatalog::current() const
{
    std::lock_guard lock(mutex_);
    return {catalog_, version_.load(std::memory_order_relaxed)};
}

// ---- Answers from a catalog ---------------------------------------------------------------------

namespace detail {

namespace {

Owner to_owner(const NameIndex& index, const NameIndex::Owner& o)
{
    return Owner{std::string(index.mesh(o)), std::string(index.name(o)), NameIndex::ipv4(o), index.ipv6(o)};
}

}  // namespace

void CatalogAnswers::use(std::shared_ptr<const Catalog> catalog)
{
    catalog_ = std::move(catalog);
    txt_at_.assign(catalog_ ? catalog_->index.owners() : 0, 0);
    txt_bytes_ = {};
}

std::optional<Owner> CatalogAnswers::find_name(std::string_view name)
{
    if (!catalog_) return std::nullopt;
    const auto* o = catalog_->index.find(name);
    if (!o) return std::nullopt;
    return to_owner(catalog_->index, *o);
}

std::optional<Addresses> CatalogAnswers::find_addresses(std::string_view name)
{
    if (!catalog_) return std::nullopt;
    auto found = catalog_->index.addresses(name);
    if (!found) return std::nullopt;
    return Addresses{found->ipv4, found->ipv6};
}

void CatalogAnswers::prefetch(std::span<const std::string_view> names)
{
    if (catalog_) catalog_->index.prefetch(names);
}

std::optional<Owner> CatalogAnswers::find_vip(const vip::Address& address)
{
    if (!catalog_) return std::nullopt;
    const auto* o = catalog_->index.find(address);
    if (!o) return std::nullopt;
    return to_owner(catalog_->index, *o);
}

std::vector<std::string> CatalogAnswers::hostnames_of(const Owner& owner)
{
    // The names in the index that answer with this owner's addresses: a PTR answer never
    // names a hostname that resolves to another VIP (one that another served mesh won).
    std::vector<std::string> out;
    if (!catalog_) return out;
    const auto& index = catalog_->index;
    const NameIndex::Owner* o = nullptr;
    if (owner.ipv4) o = index.find(*owner.ipv4);
    if (!o && owner.ipv6) o = index.find(*owner.ipv6);
    if (!o) return out;
    for (std::size_t i = 0; i < o->hostnames; ++i) out.emplace_back(index.hostname(*o, i));
    return out;
}

std::vector<std::string> CatalogAnswers::describe(const Owner& owner)
{
    std::optional<store::Snapshot> scratch;
    const auto* snapshot = reader(scratch, false);
    if (!snapshot) return {};
    auto entry = snapshot->get(conf::Kind::mesh_external_service, owner.mesh, owner.name);
    if (!entry || !*entry || !(*entry)->resource.mes()) return {};
    return describe_mes(owner.mesh, owner.name, *(*entry)->resource.mes());
}

Source::Txt CatalogAnswers::txt_rdata(std::string_view name)
{
    if (!catalog_) return {};
    const auto& index = catalog_->index;
    const auto* o = index.find(name);
    if (!o) return {Found::no, {}};
    auto& at = txt_at_[index.position(*o)];
    if (at == too_large) return {};
    if (at == 0) {
        // Read from a snapshot at the index's generation (closed on return when opened for
        // this); without one nothing is kept, and the general path answers.
        std::optional<store::Snapshot> scratch;
        const auto* snapshot = reader(scratch, true);
        if (!snapshot) return {};
        auto entry = snapshot->get(conf::Kind::mesh_external_service, index.mesh(*o), index.name(*o));
        if (!entry || !*entry || !(*entry)->resource.mes()) return {};
        // RFC 1035 3.3.14: character-strings of at most 255 bytes; the RDATA's size is 16 bits.
        std::size_t start = txt_bytes_.size();
        txt_bytes_.resize(start + 2);
        for (const auto& fact : describe_mes(index.mesh(*o), index.name(*o), *(*entry)->resource.mes())) {
            std::string_view text = std::string_view(fact).substr(0, 255);
            txt_bytes_.push_back(static_cast<std::uint8_t>(text.size()));
            txt_bytes_.insert(txt_bytes_.end(), text.begin(), text.end());
        }
        std::size_t size = txt_bytes_.size() - start - 2;
        if (size > 0xffff || start >= too_large - 1) {
            txt_bytes_.resize(start);
            at = too_large;
            return {};
        }
        txt_bytes_[start] = static_cast<std::uint8_t>(size >> 8);
        txt_bytes_[start + 1] = static_cast<std::uint8_t>(size & 0xff);
        at = static_cast<std::uint32_t>(start + 1);
    }
    std::size_t start = at - 1;
    std::size_t size = (static_cast<std::size_t>(txt_bytes_[start]) << 8) | txt_bytes_[start + 1];
    return {Found::yes, std::span<const std::uint8_t>(txt_bytes_).subspan(start + 2, size)};
}

Source::Hostnames CatalogAnswers::vip_hostnames(const vip::Address& address, std::span<std::string_view> out)
{
    if (!catalog_) return {};
    const auto& index = catalog_->index;
    const auto* o = index.find(address);
    if (!o) return {Found::no, 0};
    if (o->hostnames > out.size()) return {};
    for (std::size_t i = 0; i < o->hostnames; ++i) out[i] = index.hostname(*o, i);
    return {Found::yes, o->hostnames};
}

bool CatalogAnswers::in_pool(const vip::Address& address)
{
    return catalog_ && ((catalog_->pool4 && catalog_->pool4->contains(address)) ||
                        (catalog_->pool6 && catalog_->pool6->contains(address)));
}

std::vector<vip::Pool> CatalogAnswers::pools()
{
    std::vector<vip::Pool> out;
    if (!catalog_) return out;
    if (catalog_->pool4) out.push_back(*catalog_->pool4);
    if (catalog_->pool6) out.push_back(*catalog_->pool6);
    return out;
}

std::size_t CatalogAnswers::reverse_apex_labels(const vip::Address& address)
{
    if (!catalog_) return 0;
    // The pool's prefix rounded down to an octet or a nibble, plus in-addr.arpa or ip6.arpa.
    if (catalog_->pool4 && catalog_->pool4->contains(address)) return catalog_->pool4->prefix() / 8 + 2;
    if (catalog_->pool6 && catalog_->pool6->contains(address)) return catalog_->pool6->prefix() / 4 + 2;
    return 0;
}

bool CatalogAnswers::has_names_below(std::string_view name)
{
    return catalog_ && catalog_->index.has_names_below(name);
}

}  // namespace detail

// ---- StoreSource ------------------------------------------------------------------------------

StoreSource::StoreSource(const store::Store& store, std::vector<std::string> meshes)
    : store_(store), meshes_(std::move(meshes))
{
}

store::Result<bool> StoreSource::refresh()
{
    auto fresh = store_.snapshot();
    if (!fresh && fresh.error().map_resized) {
        // Another process grew the map: this process takes the new size only with no read
        // open, this snapshot's included.
        snapshot_.reset();
        fresh = store_.snapshot();
    }
    if (!fresh) return std::unexpected(fresh.error());
    auto generation = fresh->generation();
    if (!generation) return std::unexpected(generation.error());
    bool moved = !catalog() || *generation != generation_;
    if (moved) {
        auto pools = fresh->pools();
        if (!pools) return std::unexpected(pools.error());
        auto index = NameIndex::build(*fresh, meshes_);
        if (!index) return std::unexpected(index.error());
        auto catalog = std::make_shared<Catalog>();
        catalog->index = std::move(*index);
        catalog->pool4 = vip::Pool::parse(pools->ipv4);
        catalog->pool6 = vip::Pool::parse(pools->ipv6);
        catalog->generation = *generation;
        use(catalog);
        shared_.publish(std::move(catalog));
        // Everything the hot path reads is in the index now; the pages the build walked
        // would otherwise stay mapped, and count as this process's memory, until the next.
        store_.unmap_pages();
        // The build grew its arrays by doubling; give the freed blocks back to the system.
        malloc_trim(0);
    }
    snapshot_.emplace(std::move(*fresh));
    generation_ = *generation;
    return moved;
}

const store::Snapshot* StoreSource::reader(std::optional<store::Snapshot>&, bool)
{
    // The snapshot of the last refresh, at the catalog's generation; none while released.
    return snapshot_ ? &*snapshot_ : nullptr;
}

// ---- CatalogSource ----------------------------------------------------------------------------

CatalogSource::CatalogSource(const store::Store& store, SharedCatalog& shared) : store_(store), shared_(shared)
{
    begin_batch();
}

void CatalogSource::begin_batch()
{
    // One load per batch; the lock only when a new catalog was published. The old one is
    // freed here when this was its last holder.
    if (shared_.version() == version_) return;
    auto [catalog, version] = shared_.current();
    use(std::move(catalog));
    version_ = version;
}

const store::Snapshot* CatalogSource::reader(std::optional<store::Snapshot>& scratch, bool same_generation)
{
    // A snapshot of its own, held only for this read: a worker keeps no reader slot between
    // queries, and a map grown by another process is taken up by the control loop, which
    // needs no read open in this process (a failure here is such a moment: left to the
    // general path, which reads again).
    auto fresh = store_.snapshot();
    if (!fresh) return nullptr;
    if (same_generation) {
        auto generation = fresh->generation();
        if (!generation || !catalog() || *generation != catalog()->generation) return nullptr;
    }
    scratch.emplace(std::move(*fresh));
    return &*scratch;
}

}  // namespace dns
