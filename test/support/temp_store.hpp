// A store in a temporary directory for tests that use the store module directly, with a
// fixed clock and a loopback pool; the helpers fail the test on any error.
#pragma once

#include "store/store.hpp"

#include <catch2/catch.hpp>

#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

namespace test_support {

struct StoreFixture {
    std::filesystem::path dir;
    std::unique_ptr<store::Store> db;
    store::WriteOptions options;

    explicit StoreFixture(std::size_t map_bytes = std::size_t{256} << 20)
    {
        char tmpl[] = "/tmp/mesd-store-XXXXXX";
        dir = mkdtemp(tmpl);
        dir /= "data";
        reopen(map_bytes);
        options.now = store::Clock::time_point(std::chrono::seconds(1'800'000'000));
        options.pools.ipv4 = "127.242.0.0/16";
    }
    ~StoreFixture()
    {
        db.reset();
        std::filesystem::remove_all(dir.parent_path());
    }
    StoreFixture(const StoreFixture&) = delete;
    StoreFixture& operator=(const StoreFixture&) = delete;

    void reopen(std::size_t map_bytes = std::size_t{256} << 20)
    {
        db.reset();
        auto opened = store::Store::open(store::Options{dir.string(), map_bytes});
        REQUIRE(opened.has_value());
        db = std::move(*opened);
    }
    store::Snapshot snap()
    {
        auto s = db->snapshot();
        REQUIRE(s.has_value());
        return std::move(*s);
    }
};

}  // namespace test_support
