// The user switch and the capability sets (privilege.hpp).
#include "cmd/privilege.hpp"

#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <sys/capability.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <memory>

namespace cmd::privilege {

namespace {

std::string errno_text(int err) { return std::strerror(err); }

struct CapFree {
    void operator()(cap_t c) const { cap_free(c); }
};
using Caps = std::unique_ptr<std::remove_pointer_t<cap_t>, CapFree>;

bool low_port(std::uint16_t port) { return port > 0 && port < 1024; }

bool has(const std::vector<int>& caps, int cap) { return std::ranges::find(caps, cap) != caps.end(); }

// The process's sets, each of them exactly `caps` (which the permitted set must hold).
std::expected<void, std::string> set_exactly(const std::vector<int>& caps)
{
    Caps c(cap_init());
    if (!c) return std::unexpected("cap_init: " + errno_text(errno));
    std::vector<cap_value_t> values(caps.begin(), caps.end());
    if (!values.empty())
        for (auto flag : {CAP_PERMITTED, CAP_EFFECTIVE, CAP_INHERITABLE})
            if (cap_set_flag(c.get(), flag, static_cast<int>(values.size()), values.data(), CAP_SET) != 0)
                return std::unexpected("cap_set_flag: " + errno_text(errno));
    if (cap_set_proc(c.get()) != 0) return std::unexpected("cannot set the capabilities: " + errno_text(errno));
    return {};
}

// The ambient set: exactly `caps` (each in the permitted and inheritable sets by now).
std::expected<void, std::string> set_ambient(const std::vector<int>& caps)
{
    if (!CAP_AMBIENT_SUPPORTED()) return {};
    if (cap_reset_ambient() != 0) return std::unexpected("cannot clear the ambient capabilities: " + errno_text(errno));
    for (int cap : caps)
        if (cap_set_ambient(static_cast<cap_value_t>(cap), CAP_SET) != 0)
            return std::unexpected("cannot keep " + capability_names({cap}) + " ambient: " + errno_text(errno));
    return {};
}

// Cuts the bounding set to `caps`; needs CAP_SETPCAP in the effective set.
std::expected<void, std::string> cut_bounding(const std::vector<int>& caps)
{
    for (cap_value_t cap = 0; cap < static_cast<cap_value_t>(cap_max_bits()); ++cap) {
        if (has(caps, cap) || CAP_IS_SUPPORTED(cap) == 0) continue;
        if (cap_drop_bound(cap) != 0)
            return std::unexpected("cannot drop " + capability_names({cap}) + " from the bounding set: " + errno_text(errno));
    }
    return {};
}

bool holds(cap_t c, cap_value_t cap, cap_flag_t flag)
{
    cap_flag_value_t v = CAP_CLEAR;
    return cap_get_flag(c, cap, flag, &v) == 0 && v == CAP_SET;
}

// The chown of a file mesd made as root for `account`; a link is left alone.
std::expected<void, std::string> give(const std::string& path, const Account& account)
{
    if (::fchownat(AT_FDCWD, path.c_str(), account.uid, account.gid, AT_SYMLINK_NOFOLLOW) != 0)
        return std::unexpected("cannot give " + path + " to " + account.name + ": " + errno_text(errno));
    return {};
}

std::string user_name(uid_t uid)
{
    if (const passwd* pw = ::getpwuid(uid)) return pw->pw_name;
    return "uid " + std::to_string(uid);
}

}  // namespace

std::vector<int> needed_capabilities(const conf::Config& config)
{
    std::vector<int> caps;
    bool low = std::ranges::any_of(config.dns.listen, [](const conf::HostPort& hp) { return low_port(hp.port); }) ||
               low_port(config.admin.listen.port) ||
               (config.proxy.mode == "redirect" && low_port(config.proxy.redirect_listen.port));
    if (low || config.proxy.mode == "bind") caps.push_back(CAP_NET_BIND_SERVICE);
    if (config.proxy.upstream_mark != 0) caps.push_back(CAP_NET_ADMIN);
    return caps;
}

std::string capability_names(const std::vector<int>& caps)
{
    std::string out;
    for (int cap : caps) {
        char* name = cap_to_name(static_cast<cap_value_t>(cap));
        std::string text = name ? name : std::to_string(cap);
        cap_free(name);
        std::ranges::transform(text, text.begin(), [](char ch) { return ch >= 'a' && ch <= 'z' ? static_cast<char>(ch - 32) : ch; });
        out += (out.empty() ? "" : ",") + text;
    }
    return out.empty() ? "none" : out;
}

std::expected<Account, std::string> find_account(const std::string& spec)
{
    auto colon = spec.find(':');
    Account a;
    a.name = spec.substr(0, colon);
    std::vector<char> buf(16384);
    passwd pw{};
    passwd* found = nullptr;
    int rc = ::getpwnam_r(a.name.c_str(), &pw, buf.data(), buf.size(), &found);
    if (!found)
        return std::unexpected("user " + a.name + ": " + (rc != 0 ? errno_text(rc) : std::string("no such user")));
    a.uid = pw.pw_uid;
    a.gid = pw.pw_gid;
    group gr{};
    group* g = nullptr;
    if (colon != std::string::npos) {
        a.group = spec.substr(colon + 1);
        rc = ::getgrnam_r(a.group.c_str(), &gr, buf.data(), buf.size(), &g);
        if (!g) return std::unexpected("group " + a.group + ": " + (rc != 0 ? errno_text(rc) : std::string("no such group")));
        a.gid = gr.gr_gid;
    } else {
        rc = ::getgrgid_r(a.gid, &gr, buf.data(), buf.size(), &g);
        a.group = g ? std::string(gr.gr_name) : std::to_string(a.gid);
    }
    return a;
}

std::expected<void, std::string> hand_over_store(const std::string& data_dir, const Account& account)
{
    struct stat st {};
    if (::lstat(data_dir.c_str(), &st) != 0) return std::unexpected("data dir " + data_dir + ": " + errno_text(errno));
    if (!S_ISDIR(st.st_mode)) return std::unexpected("data dir " + data_dir + " is not a directory");
    if (st.st_uid != 0 && st.st_uid != account.uid)
        return std::unexpected("data dir " + data_dir + " belongs to " + user_name(st.st_uid) + ", not to root or " +
                               account.name + ": give it to " + account.name + " (chown -R) or choose another dataDir");
    if (auto given = give(data_dir, account); !given) return given;
    std::error_code ec;
    for (const auto& entry : std::filesystem::directory_iterator(data_dir, ec)) {
        if (!entry.is_regular_file(ec) || entry.is_symlink(ec)) continue;
        if (auto given = give(entry.path().string(), account); !given) return given;
    }
    if (ec) return std::unexpected("data dir " + data_dir + ": " + ec.message());
    return {};
}

std::expected<void, std::string> refuse_planted_links(const std::string& data_dir)
{
    std::error_code ec;
    for (const auto& entry : std::filesystem::directory_iterator(data_dir, ec)) {
        struct stat st {};
        if (::lstat(entry.path().c_str(), &st) != 0) continue;
        if (S_ISLNK(st.st_mode))
            return std::unexpected("data dir " + data_dir + " holds a symbolic link, " + entry.path().filename().string() +
                                   ": mesd opens the store as root before it becomes its user and follows no link there");
        if (S_ISREG(st.st_mode) && st.st_nlink > 1)
            return std::unexpected("data dir " + data_dir + ": " + entry.path().filename().string() + " has " +
                                   std::to_string(st.st_nlink) + " hard links; the store's files have one");
    }
    return {};  // a data dir not there yet is made by the store
}

std::expected<Dropped, std::string> drop(const conf::Config& config)
{
    Dropped out;
    const auto needed = needed_capabilities(config);
    const uid_t euid = ::geteuid();
    out.user = user_name(euid);
    if (config.user.empty() && euid == 0) {
        out.as_root_without_user = true;
        return out;
    }
    if (!config.user.empty()) {
        auto account = find_account(config.user);
        if (!account) return std::unexpected(account.error());
        if (euid != 0 && (euid != account->uid || ::getegid() != account->gid))
            return std::unexpected("mesd runs as " + out.user + ", not as root: it cannot become user " + config.user +
                                   " (start it as root, or as " + config.user + ")");
        if (euid == 0) {
            if (auto given = hand_over_store(config.data_dir, *account); !given) return std::unexpected(given.error());
            // The access log is reopened on SIGHUP, by then as the user: as NSD does its log file.
            const auto& log_path = config.proxy.access_log.path;
            struct stat st {};
            if (!log_path.empty() && log_path != "stdout" && log_path != "stderr" && ::lstat(log_path.c_str(), &st) == 0 &&
                S_ISREG(st.st_mode) && st.st_uid == 0)
                if (auto given = give(log_path, *account); !given) return std::unexpected(given.error());
            // Root holds CAP_SETPCAP now and not after the switch: the bounding set first.
            if (auto cut = cut_bounding(needed); !cut) return std::unexpected(cut.error());
            out.bounding_cut = true;
            // The kernel makes a process that changed its uid undumpable: --allow-core-dumps
            // must hold after the switch as before it.
            const int dumpable = ::prctl(PR_GET_DUMPABLE, 0, 0, 0, 0);
            if (::prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0) return std::unexpected("PR_SET_KEEPCAPS: " + errno_text(errno));
            // Groups before the gid, the gid before the uid: each needs the privileges the
            // next takes away. glibc makes each of them hold for every thread.
            if (::initgroups(account->name.c_str(), account->gid) != 0)
                return std::unexpected("cannot set the groups of " + account->name + ": " + errno_text(errno));
            if (::setresgid(account->gid, account->gid, account->gid) != 0)
                return std::unexpected("cannot switch to group " + account->group + ": " + errno_text(errno));
            if (::setresuid(account->uid, account->uid, account->uid) != 0)
                return std::unexpected("cannot switch to user " + account->name + ": " + errno_text(errno));
            ::prctl(PR_SET_KEEPCAPS, 0, 0, 0, 0);
            // The switch is for good: no way back to root may be left (a saved uid of 0).
            if (account->uid != 0 && ::setresuid(0, 0, 0) == 0)
                return std::unexpected("could switch back to root after becoming " + account->name);
            if (dumpable == 1) ::prctl(PR_SET_DUMPABLE, 1, 0, 0, 0);
            out.switched = true;
            out.user = account->name;
            if (auto set = set_exactly(needed); !set) return std::unexpected(set.error());
            if (auto ambient = set_ambient(needed); !ambient) return std::unexpected(ambient.error());
            out.kept = needed;
            return out;
        }
    }
    // Not root: keep what is needed of what was given (systemd's AmbientCapabilities=), and
    // nothing else.
    Caps current(cap_get_proc());
    if (!current) return std::unexpected("cap_get_proc: " + errno_text(errno));
    std::vector<int> kept;
    for (int cap : needed)
        if (holds(current.get(), static_cast<cap_value_t>(cap), CAP_PERMITTED)) kept.push_back(cap);
    // Given exactly what is needed (the unit's AmbientCapabilities= for a configuration that
    // needs it): nothing to change, and no capset, which the unit's ~@privileged refuses.
    auto exactly = [&](cap_flag_t flag) {
        for (cap_value_t cap = 0; cap < static_cast<cap_value_t>(cap_max_bits()); ++cap)
            if (holds(current.get(), cap, flag) != has(kept, cap)) return false;
        return true;
    };
    auto ambient_exactly = [&] {
        if (!CAP_AMBIENT_SUPPORTED()) return true;
        for (cap_value_t cap = 0; cap < static_cast<cap_value_t>(cap_max_bits()); ++cap)
            if ((cap_get_ambient(cap) == 1) != has(kept, cap)) return false;
        return true;
    };
    if (exactly(CAP_PERMITTED) && exactly(CAP_EFFECTIVE) && exactly(CAP_INHERITABLE) && ambient_exactly()) {
        out.kept = kept;
        return out;
    }
    if (holds(current.get(), CAP_SETPCAP, CAP_PERMITTED)) {
        auto with_setpcap = kept;
        if (!has(with_setpcap, CAP_SETPCAP)) with_setpcap.push_back(CAP_SETPCAP);
        if (auto set = set_exactly(with_setpcap); !set) return std::unexpected(set.error());
        if (auto cut = cut_bounding(kept); !cut) return std::unexpected(cut.error());
        out.bounding_cut = true;
    }
    if (auto ambient = set_ambient({}); !ambient) return std::unexpected(ambient.error());
    if (auto set = set_exactly(kept); !set) return std::unexpected(set.error());
    if (auto ambient = set_ambient(kept); !ambient) return std::unexpected(ambient.error());
    out.kept = kept;
    return out;
}

}  // namespace cmd::privilege
