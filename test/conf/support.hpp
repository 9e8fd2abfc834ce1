#pragma once

#include "conf/conf.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <string>
#include <vector>

namespace test_support {

inline conf::LoadResult load(const std::string& yaml, const conf::LoadOptions& options = {})
{
    return conf::load_text(yaml, "test.yaml", options);
}

// Every diagnostic of the result, formatted as mesctl prints them.
inline std::vector<std::string> messages(const conf::LoadResult& r)
{
    std::vector<std::string> out;
    for (const auto& d : r.file_errors) out.push_back(d.format());
    for (const auto& doc : r.documents)
        for (const auto& d : doc.diagnostics) out.push_back(d.format());
    return out;
}

inline std::vector<const conf::Diagnostic*> errors(const conf::LoadResult& r)
{
    std::vector<const conf::Diagnostic*> out;
    for (const auto& d : r.file_errors) out.push_back(&d);
    for (const auto& doc : r.documents)
        for (const auto& d : doc.diagnostics)
            if (d.severity == conf::Severity::error) out.push_back(&d);
    return out;
}

// True when some error is at `path` with exactly `message`.
inline bool has_error(const conf::LoadResult& r, const std::string& path, const std::string& message)
{
    auto all = errors(r);
    return std::ranges::any_of(all, [&](const conf::Diagnostic* d) { return d->path == path && d->message == message; });
}

// True when some warning is at `path` with a message that starts with `message`.
inline bool has_warning(const conf::LoadResult& r, const std::string& path, const std::string& message)
{
    for (const auto& doc : r.documents)
        for (const auto& d : doc.diagnostics)
            if (d.severity == conf::Severity::warning && d.path == path && d.message.starts_with(message)) return true;
    return false;
}

inline const conf::MeshExternalService& only_mes(const conf::LoadResult& r)
{
    REQUIRE(r.documents.size() == 1);
    REQUIRE(r.documents[0].resource.mes() != nullptr);
    return *r.documents[0].resource.mes();
}

}  // namespace test_support

// Shows every diagnostic when an expectation about a result fails.
#define CHECK_VALID(result)                                                   \
    do {                                                                      \
        INFO(Catch::Detail::stringify(test_support::messages(result)));       \
        CHECK((result).ok());                                                 \
    } while (0)
