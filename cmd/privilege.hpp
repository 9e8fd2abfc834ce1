// Least privilege without systemd: the user mesd runs as and the capabilities it keeps.
//
// Started as root with `user:` set, mesd binds every socket of its configuration as root,
// hands the store (and the access log file) to that user, and then switches gid,
// supplementary groups and uid, keeping across the switch only the capabilities its
// configuration needs later:
//   - CAP_NET_BIND_SERVICE when something listens below port 1024, or in bind mode (its VIP
//     listeners open as MES appear, long after the switch, on the ports the MES name);
//   - CAP_NET_ADMIN when proxy.upstreamMark is set (SO_MARK on every upstream connection).
// The bounding set is cut to the same, and the ambient set holds exactly them (as systemd's
// AmbientCapabilities= leaves a service), so that nothing regains more. Started as another
// user with capabilities (systemd's User= with AmbientCapabilities=), the same sets are cut
// to what the configuration needs; the bounding set only where CAP_SETPCAP allows it
// (systemd's CapabilityBoundingSet= does it there).
//
// Threads. Capability sets are per thread: drop() must run before mesd starts a thread of
// its own (the workers, libuv's pool, the cluster mirror), so that every thread is made with
// the sets it leaves. The uid and gid switch (glibc's setresuid/setresgid/setgroups) applies to
// all threads of the process; a thread that a sanitizer runtime started earlier loses every
// capability at the switch, as it lacks PR_SET_KEEPCAPS, but keeps its bounding set.
//
// Capabilities are set with libcap (Debian's libcap-dev): cap_set_proc, cap_drop_bound and
// cap_set_ambient over capset(2) and prctl(2).
#pragma once

#include "conf/conf.hpp"

#include <sys/types.h>

#include <expected>
#include <string>
#include <vector>

namespace cmd::privilege {

// The capabilities mesd needs after start-up, as cap_value_t numbers (linux/capability.h).
std::vector<int> needed_capabilities(const conf::Config& config);
// "CAP_NET_BIND_SERVICE,CAP_NET_ADMIN", or "none".
std::string capability_names(const std::vector<int>& caps);

struct Account {
    std::string name;   // the user
    std::string group;  // its primary group, or the GROUP of NAME:GROUP
    uid_t uid = 0;
    gid_t gid = 0;
};
// Looks up `user:` (NAME or NAME:GROUP) in the passwd and group databases.
std::expected<Account, std::string> find_account(const std::string& spec);

// Gives the data dir and the files directly in it to `account`, as NSD chowns the files it
// made before it drops privileges. Only a data dir owned by root (made by this start or by
// earlier runs as root) or by the account already is handed over; one owned by anyone else
// is refused: mesd does not take other users' files.
std::expected<void, std::string> hand_over_store(const std::string& data_dir, const Account& account);

// Before root opens the store of a `user:` (who may write in its directory): refuses a
// symbolic link or a file of several hard links in it, which would have root truncate or
// write, and then hand over, a file the link points at.
std::expected<void, std::string> refuse_planted_links(const std::string& data_dir);

struct Dropped {
    std::string user;                // who mesd runs as now
    std::vector<int> kept;           // the capabilities left
    bool switched = false;           // the uid changed
    bool bounding_cut = false;       // the bounding set holds only `kept`
    bool as_root_without_user = false;  // root with no `user:`: nothing changed
};
// The whole step: with `user:` as root, hand the store over and switch; as that user
// already, or as anyone else with no `user:`, cut the capabilities to what is needed; as
// another user naming a different `user:`, an error. Call it on the only thread there is,
// after every socket that needs privileges is bound and the store is open.
std::expected<Dropped, std::string> drop(const conf::Config& config);

}  // namespace cmd::privilege

namespace cmd {

// The daemon's step between start-up and serving (privilege::drop, then sandbox::enter
// when `sandbox: true`), logged. Called on the loop's thread once every socket is bound and
// the store is open, before any thread of mesd's starts. An error is for the caller to log
// and end the start with.
std::expected<void, std::string> confine(const conf::Config& config);

}  // namespace cmd
