#include "workers/worker.hpp"

#include <catch2/catch.hpp>

#include <atomic>
#include <chrono>
#include <set>
#include <thread>

TEST_CASE("worker runs posted work on its own thread in order", "[workers]")
{
    workers::Worker w(3, std::nullopt);
    std::vector<int> seen;
    std::atomic<bool> done{false};
    std::thread::id ran_on;
    w.post([&] { seen.push_back(1); });  // before start: runs once the thread does
    w.start();
    for (int i = 2; i <= 100; ++i) w.post([&, i] { seen.push_back(i); });
    w.post([&] {
        ran_on = std::this_thread::get_id();
        done = true;
    });
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    while (!done && std::chrono::steady_clock::now() < deadline) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    REQUIRE(done);
    w.finish();
    w.join();
    REQUIRE(ran_on != std::this_thread::get_id());
    REQUIRE(seen.size() == 100);
    for (int i = 0; i < 100; ++i) REQUIRE(seen[static_cast<std::size_t>(i)] == i + 1);
}

TEST_CASE("worker loop ends once finish is called and its handles are closed", "[workers]")
{
    workers::Worker w(0, std::nullopt);
    uv_timer_t timer;
    std::atomic<int> fired{0};
    uv_timer_init(w.loop(), &timer);  // set up before the thread runs, as the daemon binds listeners
    timer.data = &fired;
    uv_timer_start(&timer, [](uv_timer_t* t) { ++*static_cast<std::atomic<int>*>(t->data); }, 1, 1);
    w.start();
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    while (fired < 3 && std::chrono::steady_clock::now() < deadline) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    REQUIRE(fired >= 3);
    w.post([&] { uv_close(reinterpret_cast<uv_handle_t*>(&timer), nullptr); });
    w.finish();
    w.join();  // returns only because the loop ran out of handles
    w.post([] { FAIL("work posted after finish must not run"); });
    SUCCEED("joined");
}

TEST_CASE("worker pinned to a CPU runs there", "[workers]")
{
    auto cpus = workers::allowed_cpus();
    REQUIRE(!cpus.empty());
    int cpu = cpus.back();
    workers::Worker w(1, cpu);
    std::atomic<int> ran_on{-1};
    w.post([&] { ran_on = sched_getcpu(); });
    w.start();
    w.finish();
    w.join();
    REQUIRE(ran_on == cpu);
}

TEST_CASE("counter written by one thread is read whole by another", "[workers]")
{
    workers::Counter c;
    std::atomic<bool> stop{false};
    std::thread writer([&] {
        while (!stop) ++c;
    });
    std::uint64_t last = 0;
    for (int i = 0; i < 1000; ++i) {
        std::uint64_t now = c;
        REQUIRE(now >= last);  // never goes back
        last = now;
    }
    stop = true;
    writer.join();
    workers::Counter copy = c;
    REQUIRE(copy.load() == c.load());
    copy += 5;
    REQUIRE(copy.load() == c.load() + 5);
}
