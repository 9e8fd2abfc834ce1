#include "test/support/mesd.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <fstream>
#include <regex>
#include <sstream>
#include <stdexcept>
#include <thread>

namespace test_support {

namespace {


}  // namespace

Mesd::Mesd(const std::filesystem::path& dir, MesdOptions options) : dir_(dir)
{
    std::filesystem::create_directories(dir_);
    config_ = (dir_ / "mesd.yaml").string();
    log_path_ = (dir_ / "mesd.log").string();
    std::ofstream(config_) << "dataDir: " << (dir_ / "data").string() << "\n"
                           << "vip:\n" << options.vip_section
                           << "admin:\n  listen: 127.0.0.1:0\n"
                           << "dns:\n  listen: [\"" << options.dns_listen << "\"]\n"
                           << options.dns_section << options.extra_config;
    std::vector<std::string> argv = options.wrapper;
    argv.push_back(MESD_PATH);
    argv.push_back("--config");
    argv.push_back(config_);
    if (!options.conf_dir.empty()) {
        argv.push_back("--conf-dir");
        argv.push_back(options.conf_dir);
    }
    argv.insert(argv.end(), options.extra_args.begin(), options.extra_args.end());
    child_ = std::make_unique<Child>(argv, (dir_ / "mesd.out").string(), log_path_);
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    std::regex dns_re(R"re(sys=dns msg=listening addr=\S+:(\d+))re"), admin_re(R"re(sys=admin msg=listening addr=\S+:(\d+))re");
    while (std::chrono::steady_clock::now() < deadline) {
        std::string text = file_text(log_path_);
        if (text.find("msg=ready") != std::string::npos) {
            std::smatch m;
            if (std::regex_search(text, m, dns_re)) dns_port_ = std::stoi(m[1]);
            if (std::regex_search(text, m, admin_re)) admin_port_ = std::stoi(m[1]);
            return;
        }
        if (text.find("level=error") != std::string::npos) throw std::runtime_error("mesd failed to start:\n" + text);
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    throw std::runtime_error("mesd did not become ready:\n" + file_text(log_path_));
}

Mesd::~Mesd()
{
    if (child_) stop();
}

std::string Mesd::log() const { return file_text(log_path_); }

int Mesd::pid() const { return child_ ? child_->pid() : -1; }

int Mesd::stop()
{
    if (!child_) return -1;
    child_->signal(SIGTERM);
    int code = child_->wait();
    child_.reset();
    return code;
}

std::string Mesd::admin_get(const std::string& path) const
{
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<std::uint16_t>(admin_port_));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    timeval tv{5, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
        ::close(fd);
        return "";
    }
    std::string req = "GET " + path + " HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    (void)::write(fd, req.data(), req.size());
    std::string out;
    char buf[65536];
    ssize_t n;
    while ((n = ::read(fd, buf, sizeof buf)) > 0) out.append(buf, static_cast<std::size_t>(n));
    ::close(fd);
    return out;
}

std::string output_of(const std::vector<std::string>& argv)
{
    auto r = run(argv);
    return r.out;
}

}  // namespace test_support
