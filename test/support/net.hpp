// Small network helpers the end-to-end tests share: ports chosen by the kernel, a blocking
// TCP connect on loopback, waiting for a condition, and an nginx configuration kept inside
// a test's directory.
#pragma once

#include <chrono>
#include <filesystem>
#include <functional>
#include <string>

namespace test_support {

// A port the kernel had free for TCP (or UDP) on 127.0.0.1 a moment ago.
int free_tcp_port();
int free_udp_port();
// A port free for both UDP and TCP on 127.0.0.1 a moment ago, for a server given a fixed port
// that binds both (a DNS listener).
int free_dual_port();
// A connected TCP socket to HOST:PORT (IPv4), or -1.
int connect_to(const std::string& host, int port);
// Connects to HOST:PORT, sends `text`, shuts the sending side and reads until EOF, an error
// or `wait` without data: what an echo backend behind the proxy sent back ("" on failure).
std::string echoed(const std::string& host, int port, const std::string& text,
                   std::chrono::milliseconds wait = std::chrono::seconds(5));
// Connects to HOST:PORT, sends `line` and reads until a newline, EOF, an error or 3 s
// without data: the answer of a line-at-a-time backend behind the proxy ("<no connection>"
// when the connect failed).
std::string say(const std::string& host, int port, const std::string& line);
// True once `check` is; false when `within` passes first.
bool eventually(const std::function<bool()>& check, std::chrono::milliseconds within = std::chrono::seconds(5));
// True when something accepts TCP connections on HOST:PORT now.
bool accepting(const std::string& host, int port);
// An nginx.conf for one process (no master, no daemon) whose pid, logs and temp files stay
// in `dir`; `server` is the body of its one server block.
std::string nginx_config(const std::filesystem::path& dir, const std::string& server, const std::string& http_extra = "");

}  // namespace test_support
