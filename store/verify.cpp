#include "store/detail/verify.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <vector>

namespace store::detail {

namespace {

// LMDB 0.9's on-disk layout (mdb.c), for 64-bit builds.
constexpr std::uint32_t mdb_magic = 0xBEEFC0DE;
constexpr std::uint32_t mdb_data_version = 1;
constexpr std::size_t page_header = 16;  // mp_pgno, mp_pad, mp_flags, mp_lower/mp_upper
constexpr std::size_t node_header = 8;   // mn_lo, mn_hi, mn_flags, mn_ksize
constexpr std::uint16_t p_branch = 0x01, p_leaf = 0x02, p_overflow = 0x04, p_meta = 0x08, p_leaf2 = 0x20;
constexpr std::uint16_t f_bigdata = 0x01, f_subdata = 0x02, f_dupdata = 0x04;
constexpr std::uint64_t p_invalid = ~std::uint64_t{0};
constexpr std::size_t db_size = 48;       // MDB_db
constexpr std::size_t meta_dbs = 24;      // offset of mm_dbs in MDB_meta
constexpr std::size_t meta_last_pg = 120;
constexpr std::size_t meta_txnid = 128;
constexpr unsigned max_depth = 32;  // LMDB's CURSOR_STACK

template <class T>
T load(const unsigned char* p)
{
    T v;
    std::memcpy(&v, p, sizeof v);
    return v;
}

struct Db {
    std::uint16_t flags = 0;
    std::uint16_t depth = 0;
    std::uint64_t branch_pages = 0, leaf_pages = 0, overflow_pages = 0, entries = 0, root = p_invalid;

    static Db at(const unsigned char* p)
    {
        Db d;
        d.flags = load<std::uint16_t>(p + 4);
        d.depth = load<std::uint16_t>(p + 6);
        d.branch_pages = load<std::uint64_t>(p + 8);
        d.leaf_pages = load<std::uint64_t>(p + 16);
        d.overflow_pages = load<std::uint64_t>(p + 24);
        d.entries = load<std::uint64_t>(p + 32);
        d.root = load<std::uint64_t>(p + 40);
        return d;
    }
};

struct Meta {
    std::uint32_t magic = 0, version = 0;
    std::uint64_t map_size = 0;
    std::uint32_t page_size = 0;  // mm_dbs[FREE_DBI].md_pad
    Db free_db, main_db;
    std::uint64_t last_pg = 0, txnid = 0;
    std::uint16_t flags = 0;
    std::uint64_t pgno = 0;
};

Meta parse_meta(const unsigned char* page)
{
    Meta m;
    m.pgno = load<std::uint64_t>(page);
    m.flags = load<std::uint16_t>(page + 10);
    const unsigned char* p = page + page_header;
    m.magic = load<std::uint32_t>(p);
    m.version = load<std::uint32_t>(p + 4);
    m.map_size = load<std::uint64_t>(p + 16);
    m.page_size = load<std::uint32_t>(p + meta_dbs);
    m.free_db = Db::at(p + meta_dbs);
    m.main_db = Db::at(p + meta_dbs + db_size);
    m.last_pg = load<std::uint64_t>(p + meta_last_pg);
    m.txnid = load<std::uint64_t>(p + meta_txnid);
    return m;
}

Failure damaged(const std::string& path, const std::string& what)
{
    return Failure{MDB_CORRUPTED, path + " is damaged: " + what};
}

class Walker {
public:
    Walker(int fd, std::string path, std::size_t page_size, std::uint64_t last_pg)
        : fd_(fd), path_(std::move(path)), page_size_(page_size), last_pg_(last_pg), seen_(last_pg + 1, false)
    {
    }

    // Walks one database's tree; `what` names it in messages.
    Res<void> database(const Db& db, const std::string& what, bool is_main, bool is_free)
    {
        if (db.root == p_invalid) {
            if (db.entries != 0 || db.depth != 0) return fail(what + ": no root page but " + std::to_string(db.entries) + " entries");
            return {};
        }
        if (db.depth == 0 || db.depth > max_depth) return fail(what + ": impossible depth " + std::to_string(db.depth));
        Counts counts;
        if (auto r = page(db.root, 1, db.depth, what, is_main, is_free, counts); !r) return r;
        if (counts.branch != db.branch_pages || counts.leaf != db.leaf_pages || counts.overflow != db.overflow_pages ||
            counts.entries != db.entries)
            return fail(what + ": its page and entry counts disagree with its tree");
        return {};
    }

private:
    struct Counts {
        std::uint64_t branch = 0, leaf = 0, overflow = 0, entries = 0;
    };

    Failure failure(const std::string& what) const { return damaged(path_, what); }
    std::unexpected<Failure> fail(const std::string& what) const { return std::unexpected(failure(what)); }

    Res<std::vector<unsigned char>> read(std::uint64_t pgno, std::uint64_t pages, const std::string& what)
    {
        std::vector<unsigned char> buf(static_cast<std::size_t>(pages) * page_size_);
        auto offset = static_cast<off_t>(pgno * page_size_);
        std::size_t done = 0;
        while (done < buf.size()) {
            ssize_t n = ::pread(fd_, buf.data() + done, buf.size() - done, offset + static_cast<off_t>(done));
            if (n < 0 && errno == EINTR) continue;
            if (n < 0) return std::unexpected(Failure{errno, path_ + ": " + std::strerror(errno)});
            if (n == 0) return fail(what + ": page " + std::to_string(pgno) + " lies past the end of the file");
            done += static_cast<std::size_t>(n);
        }
        return buf;
    }

    Res<void> claim(std::uint64_t pgno, std::uint64_t pages, const std::string& what)
    {
        if (pgno < 2 || pages == 0 || pgno > last_pg_ || pages > last_pg_ - pgno + 1)
            return fail(what + ": page number " + std::to_string(pgno) + " is outside the file's " +
                        std::to_string(last_pg_ + 1) + " pages");
        for (std::uint64_t i = pgno; i < pgno + pages; ++i) {
            if (seen_[i]) return fail(what + ": page " + std::to_string(i) + " is reached twice");
            seen_[i] = true;
        }
        return {};
    }

    Res<void> free_list(std::string_view data, const std::string& what)
    {
        // An MDB_IDL: a count, then that many page numbers.
        if (data.size() < 8 || data.size() % 8 != 0) return fail(what + ": a free-page list has a bad size");
        auto count = load<std::uint64_t>(reinterpret_cast<const unsigned char*>(data.data()));
        if (count != data.size() / 8 - 1) return fail(what + ": a free-page list has a bad count");
        for (std::size_t i = 1; i <= count; ++i) {
            auto pgno = load<std::uint64_t>(reinterpret_cast<const unsigned char*>(data.data()) + i * 8);
            if (pgno < 2 || pgno > last_pg_) return fail(what + ": a free page number is outside the file");
        }
        return {};
    }

    Res<void> page(std::uint64_t pgno, unsigned level, unsigned depth, const std::string& what, bool is_main,
                   bool is_free, Counts& counts)
    {
        if (auto r = claim(pgno, 1, what); !r) return r;
        auto buf = read(pgno, 1, what);
        if (!buf) return std::unexpected(buf.error());
        const unsigned char* p = buf->data();
        std::string where = what + ", page " + std::to_string(pgno);
        if (load<std::uint64_t>(p) != pgno) return fail(where + ": its header names another page");
        auto flags = load<std::uint16_t>(p + 10);
        auto lower = load<std::uint16_t>(p + 12);
        auto upper = load<std::uint16_t>(p + 14);
        bool branch = (flags & p_branch) != 0, leaf = (flags & p_leaf) != 0;
        if (branch == leaf || (flags & (p_overflow | p_meta | p_leaf2)))
            return fail(where + ": not a branch or leaf page (flags " + std::to_string(flags) + ")");
        if (branch != (level < depth)) return fail(where + ": at the wrong depth of the tree");
        if (lower < page_header || lower > upper || upper > page_size_ || (lower - page_header) % 2)
            return fail(where + ": its free-space bounds are impossible");
        std::size_t keys = (lower - page_header) / 2;
        if (keys == 0) return fail(where + ": has no entries");
        (branch ? counts.branch : counts.leaf) += 1;
        for (std::size_t i = 0; i < keys; ++i) {
            std::size_t off = load<std::uint16_t>(p + page_header + 2 * i);
            std::string node = where + ", entry " + std::to_string(i);
            if (off < upper || off + node_header > page_size_) return fail(node + ": lies outside the page's data");
            const unsigned char* n = p + off;
            std::uint32_t lo_hi = load<std::uint16_t>(n) | static_cast<std::uint32_t>(load<std::uint16_t>(n + 2)) << 16;
            auto node_flags = load<std::uint16_t>(n + 4);
            std::size_t ksize = load<std::uint16_t>(n + 6);
            if (off + node_header + ksize > page_size_) return fail(node + ": its key runs past the page");
            if (branch) {
                std::uint64_t child = lo_hi | static_cast<std::uint64_t>(node_flags) << 32;
                if (auto r = page(child, level + 1, depth, what, is_main, is_free, counts); !r) return r;
                continue;
            }
            ++counts.entries;
            std::size_t dsize = lo_hi;
            const unsigned char* data = n + node_header + ksize;
            if (node_flags & f_dupdata) return fail(node + ": marked as a duplicate list, which the store never writes");
            std::vector<unsigned char> big;
            if (node_flags & f_bigdata) {
                if (off + node_header + ksize + 8 > page_size_) return fail(node + ": its overflow page number runs past the page");
                auto first = load<std::uint64_t>(data);
                std::uint64_t pages = (page_header + dsize + page_size_ - 1) / page_size_;
                if (auto r = claim(first, pages, node + " (overflow)"); !r) return r;
                auto ov = read(first, pages, node + " (overflow)");
                if (!ov) return std::unexpected(ov.error());
                if (load<std::uint64_t>(ov->data()) != first || !(load<std::uint16_t>(ov->data() + 10) & p_overflow) ||
                    load<std::uint32_t>(ov->data() + 12) != pages)
                    return fail(node + ": its overflow page " + std::to_string(first) + " is not one");
                counts.overflow += pages;
                big = std::move(*ov);
                data = big.data() + page_header;
            } else if (off + node_header + ksize + dsize > page_size_) {
                return fail(node + ": its value runs past the page");
            }
            std::string_view value(reinterpret_cast<const char*>(data), dsize);
            if (is_free) {
                if (auto r = free_list(value, node); !r) return r;
            } else if (is_main) {
                // The main database holds the named databases' records.
                if (!(node_flags & f_subdata) || dsize != db_size) return fail(node + ": not a named database's record");
                std::string name(reinterpret_cast<const char*>(n + node_header), ksize);
                if (auto r = database(Db::at(data), "database " + name, false, false); !r) return r;
            } else if (node_flags & f_subdata) {
                return fail(node + ": marked as a sub-database, which the store never writes");
            }
        }
        return {};
    }

    int fd_;
    std::string path_;
    std::size_t page_size_;
    std::uint64_t last_pg_;
    std::vector<bool> seen_;
};

}  // namespace

namespace {

// One pass; `txnid` gets the transaction id of the newest meta page read.
Res<void> verify_once(const std::string& path, std::uint64_t& txnid)
{
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT) return {};
        return std::unexpected(Failure{errno, path + ": " + std::strerror(errno)});
    }
    struct Closer {
        int fd;
        ~Closer() { ::close(fd); }
    } closer{fd};
    struct stat st {};
    if (::fstat(fd, &st) != 0) return std::unexpected(Failure{errno, path + ": " + std::strerror(errno)});
    auto size = static_cast<std::uint64_t>(st.st_size);
    if (size == 0) return {};

    // The two meta pages; each starts its page, and the page size is in the first.
    constexpr std::size_t meta_bytes = page_header + meta_txnid + 8;
    Meta metas[2];
    std::uint32_t page_size = 0;
    for (int i = 0; i < 2; ++i) {
        unsigned char buf[meta_bytes];
        auto at = static_cast<off_t>(i == 0 ? 0 : page_size);
        if (static_cast<std::uint64_t>(at) + meta_bytes > size)
            return std::unexpected(Failure{MDB_INVALID, path + " is damaged: truncated to " + std::to_string(size) +
                                                            " bytes, shorter than its two meta pages"});
        if (::pread(fd, buf, meta_bytes, at) != static_cast<ssize_t>(meta_bytes))
            return std::unexpected(Failure{errno ? errno : EIO, path + ": cannot read meta page " + std::to_string(i)});
        metas[i] = parse_meta(buf);
        const Meta& m = metas[i];
        std::string which = "meta page " + std::to_string(i);
        if (!(m.flags & p_meta) || m.magic != mdb_magic)
            return std::unexpected(Failure{MDB_INVALID, path + " is damaged or not an LMDB file: " + which + " has no LMDB signature"});
        if (m.version != mdb_data_version)
            return std::unexpected(Failure{MDB_VERSION_MISMATCH, path + ": " + which + " has LMDB format version " +
                                                                     std::to_string(m.version) + ", not " +
                                                                     std::to_string(mdb_data_version)});
        if (i == 0) {
            page_size = m.page_size;
            if (page_size < 512 || page_size > 65536 || (page_size & (page_size - 1)))
                return std::unexpected(damaged(path, which + " records an impossible page size " + std::to_string(page_size)));
        }
    }
    const Meta& m = metas[1].txnid > metas[0].txnid ? metas[1] : metas[0];
    txnid = m.txnid;
    std::string which = std::string("the newest meta page (") + (&m == &metas[0] ? "0" : "1") + ")";
    std::uint64_t pages = size / page_size;
    if (m.last_pg < 1 || m.last_pg >= pages)
        return std::unexpected(damaged(path, which + " says the file has " + std::to_string(m.last_pg + 1) +
                                                 " pages, but it is " + std::to_string(size) + " bytes (" +
                                                 std::to_string(pages) + " pages): truncated"));
    if (m.map_size / page_size < m.last_pg + 1)
        return std::unexpected(damaged(path, which + " records a map of " + std::to_string(m.map_size) +
                                                 " bytes, smaller than its " + std::to_string(m.last_pg + 1) + " pages"));

    Walker walker(fd, path, page_size, m.last_pg);
    if (auto r = walker.database(m.free_db, "the free-page database", false, true); !r) return r;
    if (auto r = walker.database(m.main_db, "the main database", true, false); !r) return r;
    return {};
}

}  // namespace

Res<void> verify_data_file(const std::string& path)
{
    // A writer in another process (mesd, another mesctl) may commit during the walk and
    // reuse pages the walk is reading. Pages the newest meta page refers to are never
    // rewritten before a later commit, so a failure with the same newest transaction before
    // and after is damage; otherwise walk again.
    Res<void> result;
    for (int attempt = 0; attempt < 5; ++attempt) {
        std::uint64_t before = 0, after = 0;
        result = verify_once(path, before);
        if (result || result.error().code == MDB_VERSION_MISMATCH) return result;
        Res<void> again = verify_once(path, after);
        // A second pass that finds nothing wrong wins: the first may have read the file in
        // the middle of another process's commit (its size before the commit grew it).
        if (again) return again;
        if (after == before) return result;
    }
    return result;
}

}  // namespace store::detail
