// Typed reading of yaml-cpp nodes with diagnostics that point into the file: every value
// read through here is checked for its YAML type, and every mapping read through `Fields`
// reports the keys nobody asked for as unknown fields.
#pragma once

#include "conf/conf.hpp"

#include <yaml-cpp/yaml.h>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace conf::detail {

// Collects the diagnostics of one document; the loader stamps them with the document's kind,
// mesh and name once all of it has been read.
class Reporter {
public:
    // `line_offset` is added to every line: documents are parsed one at a time, each from
    // its own slice of the file.
    Reporter(Document& doc, std::string file, int line_offset = 0)
        : doc_(doc), file_(std::move(file)), line_offset_(line_offset)
    {
    }

    Mark mark(const YAML::Node& node) const;
    Mark mark(const YAML::Mark& m) const;

    void error(const Mark& at, std::string path, std::string message);
    void error(const YAML::Node& at, std::string path, std::string message) { error(mark(at), std::move(path), std::move(message)); }
    void warning(const Mark& at, std::string path, std::string message);

    Document& document() { return doc_; }
    const std::string& file() const { return file_; }
    // Nodes created for absent keys carry no position; they are reported at this one.
    void set_fallback(const YAML::Node& node) { fallback_ = mark(node); }
    // Every key a reader asks for, present or not, is added to `out` as a dotted path: the
    // keys the reader knows, taken from the reader itself (conf::config_keys()).
    void record_keys(std::vector<std::string>* out) { keys_ = out; }
    bool recording_keys() const { return keys_ != nullptr; }
    void key_asked(std::string path)
    {
        if (keys_) keys_->push_back(std::move(path));
    }

private:
    void add(Severity severity, const Mark& at, std::string path, std::string message);

    Document& doc_;
    std::string file_;
    int line_offset_ = 0;
    Mark fallback_;
    std::vector<std::string>* keys_ = nullptr;
};

std::string join(std::string_view path, std::string_view key);
std::string join(std::string_view path, std::size_t index);

// The fields of one YAML mapping at `path`.
class Fields {
public:
    // Reports an error when `node` is defined but not a mapping.
    Fields(Reporter& reporter, const YAML::Node& node, std::string path);
    Fields(const Fields&) = delete;
    Fields& operator=(const Fields&) = delete;
    // Reports the fields never taken as unknown.
    ~Fields();

    bool ok() const { return ok_; }
    const YAML::Node& node() const { return node_; }
    const std::string& path() const { return path_; }
    std::string path(std::string_view key) const { return join(path_, key); }

    // The value of `key`, or an undefined node when it is absent. A null value counts as
    // absent, as Go's decoder treats it.
    YAML::Node take(std::string_view key);
    bool has(std::string_view key) const;

private:
    struct Entry {
        std::string key;
        YAML::Node key_node;
        YAML::Node value;
        bool taken = false;
    };
    Reporter& reporter_;
    YAML::Node node_;
    std::string path_;
    std::vector<Entry> entries_;
    // Key to its place in entries_: a mapping of n keys is read in O(n), duplicates included.
    struct KeyHash {
        using is_transparent = void;
        std::size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
    };
    std::unordered_map<std::string, std::size_t, KeyHash, std::equal_to<>> index_;
    bool ok_ = false;
};

bool present(const YAML::Node& node);  // defined and not null

// Each returns nullopt when the node is absent or unusable; unusable values are reported.
std::optional<std::string> read_string(Reporter& r, const YAML::Node& node, const std::string& path);
std::optional<bool> read_bool(Reporter& r, const YAML::Node& node, const std::string& path);

// An integer field checked against [min, max]; outside the range reports `range_message`.
std::optional<std::int64_t> read_int(Reporter& r, const YAML::Node& node, const std::string& path,
                                     std::int64_t min, std::int64_t max, std::string_view range_message);

// A mapping of string to string (labels, matchLabels).
std::map<std::string, std::string> read_string_map(Reporter& r, const YAML::Node& node,
                                                   const std::string& path);

// One of `choices`; anything else reports `"FIELD" must be one of ["A", "B"]` as Kuma does.
std::optional<std::size_t> read_choice(Reporter& r, const YAML::Node& node, const std::string& path,
                                       std::string_view field, std::span<const std::string_view> choices);

}  // namespace conf::detail
