// Reading files into documents: size and encoding checks, YAML parsing, the two document
// shapes (Universal and Kubernetes), then the checks that need the whole input.
#include "conf/conf.hpp"
#include "conf/detail/spec.hpp"

#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/parser.h>

#include <algorithm>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <map>
#include <spanstream>
#include <tuple>

namespace conf {

namespace {

namespace fs = std::filesystem;
using detail::Fields;
using detail::Reporter;
using detail::present;
using detail::read_string;

Mark mark_at_offset(const std::string& file, std::string_view text, std::size_t offset)
{
    auto before = text.substr(0, offset);
    int line = 1 + static_cast<int>(std::ranges::count(before, '\n'));
    auto last_nl = before.rfind('\n');
    int col = static_cast<int>(offset - (last_nl == std::string_view::npos ? 0 : last_nl + 1)) + 1;
    return Mark{file, line, col};
}

std::string_view secret_role_word(detail::SecretRef::Role role)
{
    switch (role) {
    case detail::SecretRef::Role::ca_cert: return "caCert";
    case detail::SecretRef::Role::client_cert: return "clientCert";
    case detail::SecretRef::Role::client_key: return "clientKey";
    }
    return "?";
}

std::optional<Kind> kind_from_exact(std::string_view s)
{
    if (s == "MeshExternalService") return Kind::mesh_external_service;
    if (s == "HostnameGenerator") return Kind::hostname_generator;
    if (s == "Secret") return Kind::secret;
    return std::nullopt;
}

struct Piece {
    std::string_view text;
    int first_line = 0;  // 0-based line of the file where the piece starts
};

bool is_marker_line(std::string_view line, std::string_view marker)
{
    return line.starts_with(marker) &&
           (line.size() == 3 || line[3] == ' ' || line[3] == '\t' || line[3] == '\r');
}

// Cuts a stream into its documents at `---` lines (YAML forbids that marker at the start of
// a line inside any scalar, so the cut never falls inside a value). A piece keeps its
// marker line so that what follows the marker on that line still parses.
std::vector<Piece> split_documents(std::string_view text)
{
    std::vector<Piece> pieces;
    std::size_t start = 0;
    int start_line = 0;
    int line_no = 0;
    bool content = false;  // anything but directives, comments and blank lines so far
    for (std::size_t pos = 0; pos <= text.size();) {
        auto nl = text.find('\n', pos);
        std::size_t end = nl == std::string_view::npos ? text.size() : nl;
        std::string_view line = text.substr(pos, end - pos);
        if (is_marker_line(line, "---") && content) {
            pieces.push_back(Piece{text.substr(start, pos - start), start_line});
            start = pos;
            start_line = line_no;
            content = false;
        }
        auto first = line.find_first_not_of(" \t\r");
        if (first != std::string_view::npos && line[first] != '#' && line[0] != '%' && !is_marker_line(line, "..."))
            content = true;
        if (nl == std::string_view::npos) break;
        pos = nl + 1;
        ++line_no;
    }
    if (start < text.size()) pieces.push_back(Piece{text.substr(start), start_line});
    return pieces;
}

// Counts the nodes of one document as the parser streams its events, without building them,
// and stops the parse at the first node past the bound.
class NodeCounter : public YAML::EventHandler {
public:
    struct TooMany {
        YAML::Mark mark;
    };

    void OnDocumentStart(const YAML::Mark&) override {}
    void OnDocumentEnd() override {}
    void OnNull(const YAML::Mark& mark, YAML::anchor_t) override { count(mark); }
    void OnAlias(const YAML::Mark&, YAML::anchor_t) override {}  // shares the anchored node
    void OnScalar(const YAML::Mark& mark, const std::string&, YAML::anchor_t, const std::string&) override
    {
        count(mark);
    }
    void OnSequenceStart(const YAML::Mark& mark, const std::string&, YAML::anchor_t, YAML::EmitterStyle::value) override
    {
        count(mark);
    }
    void OnSequenceEnd() override {}
    void OnMapStart(const YAML::Mark& mark, const std::string&, YAML::anchor_t, YAML::EmitterStyle::value) override
    {
        count(mark);
    }
    void OnMapEnd() override {}

private:
    void count(const YAML::Mark& mark)
    {
        if (++nodes_ > max_document_nodes) throw TooMany{mark};
    }
    std::size_t nodes_ = 0;
};

// At most how many nodes `text` can make. A node begins at the start of the text or after a
// line break or one of , [ { - : ? (a block entry, a key, a value, a flow entry), and one
// such byte begins at most three (`[:` is a mapping with a null key and a null value), so
// three per such byte bounds the count; bytes inside quoted or block scalars only raise it.
std::size_t node_bound(std::string_view text)
{
    std::size_t starts = 1;
    for (char c : text)
        starts += c == '\n' || c == '\r' || c == ',' || c == '[' || c == '{' || c == '-' || c == ':' || c == '?';
    return 3 * starts;
}

// Where the document's node count first passes max_document_nodes, or nullopt. Only a
// document whose bytes allow that many nodes pays for the counting parse (as long as
// building it, without the memory); the others, a 10 MB scalar among them, cost one pass
// over the bytes.
std::optional<YAML::Mark> too_many_nodes(std::string_view text)
{
    if (node_bound(text) <= max_document_nodes) return std::nullopt;
    std::ispanstream in(std::span<const char>(text.data(), text.size()));  // no copy of 32 MiB
    YAML::Parser parser(in);
    NodeCounter counter;
    try {
        parser.HandleNextDocument(counter);
    } catch (const NodeCounter::TooMany& e) {
        return e.mark;
    } catch (const std::exception&) {
        // Not YAML: the real parse reports where.
    }
    return std::nullopt;
}

constexpr std::string_view kuma_api_version = "kuma.io/v1alpha1";
constexpr std::string_view secret_type = "system.kuma.io/secret";
constexpr std::string_view mesh_label = "kuma.io/mesh";
constexpr std::string_view namespace_label = "k8s.kuma.io/namespace";
constexpr std::string_view display_name_label = "kuma.io/display-name";
constexpr std::string_view origin_label = "kuma.io/origin";

struct DecodeContext {
    const LoadOptions& options;
    std::vector<detail::SecretRef>& refs;  // `secret:` data sources met while decoding
};

struct Decoded {
    Document document;
    std::vector<detail::SecretRef> refs;
};

// Decodes one document; touches nothing but what it returns.
Decoded decode_document(const LoadOptions& options, const YAML::Node& root, const std::string& file, int line_offset);

// Reads the files under some paths into memory, one pass, no parsing.
class SourceReader {
public:
    explicit SourceReader(const LoadOptions& options) : options_(options) {}

    void read_path(const std::string& path);
    Sources take() { return std::move(out_); }

private:
    void error(const std::string& file, std::string message)
    {
        Diagnostic d;
        d.mark = Mark{file, 0, 0};
        d.message = std::move(message);
        out_.errors.push_back(std::move(d));
        out_.unreadable.push_back(file);
    }
    // `shown` is the name the user knows; `real` where the bytes are read.
    void walk(const fs::path& shown, const fs::path& real, const fs::path& root, bool top);
    void read_file(const std::string& shown, const fs::path& real, bool regular_only);

    const LoadOptions& options_;
    Sources out_;
    std::vector<std::string> visited_;  // canonical directories walked: a link loop ends here
    std::vector<std::pair<std::string, fs::path>> pending_;  // files found by walk(), read after
};

bool inside(const fs::path& canonical, const fs::path& root)
{
    auto c = canonical.native();
    const auto& r = root.native();
    return c == r || (c.starts_with(r) && (r.ends_with('/') || c[r.size()] == '/'));
}

bool yaml_name(const fs::path& p)
{
    auto ext = p.extension().string();
    return ext == ".yaml" || ext == ".yml";
}

void SourceReader::read_path(const std::string& path)
{
    std::error_code ec;
    auto status = fs::status(path, ec);
    if (ec || !fs::exists(status)) {
        error(path, "cannot read: " + (ec ? ec.message() : std::string("No such file or directory")));
        return;
    }
    if (!fs::is_directory(status)) {
        read_file(path, path, false);  // named by the user: a pipe such as /dev/stdin is fine
        return;
    }
    auto root = fs::canonical(path, ec);
    if (ec) {
        error(path, "cannot read directory: " + ec.message());
        return;
    }
    walk(path, root, root, true);
    // In name order across the whole tree, as a reader lists it.
    std::ranges::sort(pending_, {}, &std::pair<std::string, fs::path>::first);
    for (const auto& [shown, real] : pending_) read_file(shown, real, true);
    pending_.clear();
}

void SourceReader::walk(const fs::path& shown, const fs::path& real, const fs::path& root, bool top)
{
    std::error_code ec;
    auto canonical = fs::canonical(real, ec);
    if (ec) {
        error(shown.string(), "cannot read directory: " + ec.message());
        return;
    }
    if (std::ranges::find(visited_, canonical.native()) != visited_.end()) return;
    visited_.push_back(canonical.native());

    // Kubernetes' atomic writer flips `..data` to a new `..<timestamp>` directory and then
    // fixes the user-visible links; reading through those links one by one mixes versions.
    // The link is read once and the versioned directory listed instead (RFC-less, but
    // kubernetes/pkg/volume/util/atomic_writer.go documents the scheme).
    std::optional<fs::path> data_dir;
    if (top) {
        auto target = fs::read_symlink(real / "..data", ec);
        if (!ec) data_dir = real / target;
        ec.clear();
    }

    std::vector<std::pair<std::string, fs::directory_entry>> entries;
    fs::directory_iterator it(real, ec);
    for (; !ec && it != fs::directory_iterator(); it.increment(ec))
        entries.emplace_back(it->path().filename().string(), *it);
    if (ec) {
        error(shown.string(), "cannot read directory: " + ec.message());
        return;
    }
    std::ranges::sort(entries, {}, &std::pair<std::string, fs::directory_entry>::first);
    if (data_dir) walk(shown, *data_dir, root, false);
    for (const auto& [name, entry] : entries) {
        // Hidden entries are skipped: Kubernetes keeps its versions under `..` names.
        if (name.empty() || name.front() == '.') continue;
        auto shown_path = shown / name;
        auto link = entry.symlink_status(ec);
        if (ec) {
            error(shown_path.string(), "cannot read: " + ec.message());
            continue;
        }
        if (fs::is_symlink(link)) {
            auto target = fs::read_symlink(entry.path(), ec);
            // Read through the versioned directory above, with all the others.
            if (!ec && data_dir && target.is_relative() && target.begin() != target.end() && *target.begin() == "..data")
                continue;
            auto resolved = fs::canonical(entry.path(), ec);
            if (ec) {
                error(shown_path.string(), "cannot read: a link to \"" + target.string() + "\" that leads nowhere (" +
                                               ec.message() + ")");
                continue;
            }
            if (!inside(resolved, root) && !options_.follow_outside_links) {
                error(shown_path.string(), "a link that leads out of the directory; not followed (allow such links with "
                                           "mesctl --follow-links or mesd --conf-dir-follow-links)");
                continue;
            }
        }
        auto status = entry.status(ec);
        if (ec) {
            error(shown_path.string(), "cannot read: " + ec.message());
            continue;
        }
        if (fs::is_directory(status)) {
            walk(shown_path, entry.path(), root, false);
        } else if (yaml_name(entry.path())) {
            pending_.emplace_back(shown_path.string(), entry.path());
        }
    }
}

void SourceReader::read_file(const std::string& shown, const fs::path& real, bool regular_only)
{
    // O_NONBLOCK: a FIFO put where a file was listed must not hang the reader.
    int fd = ::open(real.c_str(), O_RDONLY | O_CLOEXEC | (regular_only ? O_NONBLOCK : 0));
    if (fd < 0) {
        error(shown, std::string("cannot read: ") + std::strerror(errno));
        return;
    }
    struct stat st {};
    if (::fstat(fd, &st) != 0) {
        int e = errno;
        ::close(fd);
        error(shown, std::string("cannot read: ") + std::strerror(e));
        return;
    }
    if (regular_only && !S_ISREG(st.st_mode)) {
        ::close(fd);
        error(shown, "cannot read: not a regular file");
        return;
    }
    if (S_ISREG(st.st_mode) && static_cast<std::uint64_t>(st.st_size) > max_file_bytes) {
        ::close(fd);
        Diagnostic d;
        d.mark = Mark{shown, 0, 0};
        d.message = "file is " + std::to_string(st.st_size) + " bytes, larger than the limit of " +
                    std::to_string(max_file_bytes) + " bytes; split it into several files";
        out_.errors.push_back(std::move(d));
        return;
    }
    std::string text;
    char buf[65536];
    for (;;) {
        auto n = ::read(fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
            int e = errno;
            ::close(fd);
            error(shown, std::string("cannot read: ") + std::strerror(e));
            return;
        }
        if (n == 0) break;
        text.append(buf, static_cast<std::size_t>(n));
        if (text.size() > max_file_bytes) {
            ::close(fd);
            Diagnostic d;
            d.mark = Mark{shown, 0, 0};
            d.message = "file is larger than the limit of " + std::to_string(max_file_bytes) +
                        " bytes; split it into several files";
            out_.errors.push_back(std::move(d));
            return;
        }
    }
    ::close(fd);
    out_.files.push_back(Sources::File{shown, std::move(text)});
}

class Loader {
public:
    explicit Loader(const LoadOptions& options) : options_(options) {}

    void load_sources(const Sources& sources);
    void load_text(std::string_view text, const std::string& file);
    LoadResult finish();

private:
    void file_error(Mark mark, std::string message)
    {
        Diagnostic d;
        d.mark = std::move(mark);
        d.message = std::move(message);
        result_.file_errors.push_back(std::move(d));
    }
    void check_duplicates();
    void check_secret_refs();

    const LoadOptions& options_;
    LoadResult result_;
    std::vector<std::vector<detail::SecretRef>> refs_;  // parallel to result_.documents
};

void Loader::load_sources(const Sources& sources)
{
    result_.file_errors.insert(result_.file_errors.end(), sources.errors.begin(), sources.errors.end());
    result_.unreadable.insert(result_.unreadable.end(), sources.unreadable.begin(), sources.unreadable.end());
    for (const auto& f : sources.files) load_text(f.text, f.name);
}

void Loader::load_text(std::string_view text, const std::string& file)
{
    if (text.size() > max_file_bytes) {
        file_error(Mark{file, 0, 0}, "input is larger than the limit of " + std::to_string(max_file_bytes) + " bytes");
        return;
    }
    if (auto nul = text.find('\0'); nul != std::string_view::npos) {
        file_error(mark_at_offset(file, text, nul), "not a text file (NUL byte at offset " + std::to_string(nul) + ")");
        return;
    }
    if (auto bad = invalid_utf8_at(text); bad != std::string_view::npos) {
        file_error(mark_at_offset(file, text, bad), "not UTF-8 text (invalid byte at offset " + std::to_string(bad) + ")");
        return;
    }
    // Documents are parsed one at a time: yaml-cpp keeps every node of a LoadAll in memory
    // at once, which for a file of 100,000 resources costs more in allocation than in parsing.
    // (Parsing them on several threads gains little: yaml-cpp's nodes are reference counted,
    // and the counts become atomic operations as soon as a second thread exists.)
    auto pieces = split_documents(text);
    result_.documents.reserve(result_.documents.size() + pieces.size());
    refs_.reserve(refs_.size() + pieces.size());
    std::size_t decoded = 0;
    for (const auto& piece : pieces) {
        YAML::Node root;
        if (auto at = too_many_nodes(piece.text)) {
            file_error(Mark{file, at->line + 1 + piece.first_line, at->column + 1},
                       "document has more than " + std::to_string(max_document_nodes) +
                           " YAML nodes (the limit per document); split it into several documents");
            return;
        }
        try {
            root = YAML::Load(std::string(piece.text));
        } catch (const YAML::ParserException& e) {
            Mark m{file, e.mark.line >= 0 ? e.mark.line + 1 + piece.first_line : 0,
                   e.mark.column >= 0 ? e.mark.column + 1 : 0};
            file_error(m, "invalid YAML: " + e.msg);
            return;
        } catch (const std::exception& e) {
            file_error(Mark{file, piece.first_line + 1, 0}, std::string("invalid YAML: ") + e.what());
            return;
        }
        if (!root.IsDefined() || root.IsNull()) continue;  // an empty document between `---`
        auto d = decode_document(options_, root, file, piece.first_line);
        result_.documents.push_back(std::move(d.document));
        refs_.push_back(std::move(d.refs));
        ++decoded;
    }
    if (decoded == 0) file_error(Mark{file, 0, 0}, "no YAML documents in the file (it is empty)");
}

void check_name(Reporter& r, const YAML::Node& name_node, const std::string& path, Resource& res)
{
    auto name = read_string(r, name_node, path);
    if (!name || name->empty()) {
        r.error(name_node, path, "must not be empty");
        return;
    }
    res.name = *name;
    // A MES's name is checked on its display name, once the labels are known.
    if (res.kind != Kind::mesh_external_service && !is_rfc1123_subdomain(*name))
        r.error(name_node, path, std::string(rfc1123_subdomain_message));
}

// Kuma checks a MES's display name (the label kuma.io/display-name when set, else the name)
// against RFC 1035, so that a MES synced from a Kubernetes zone as `backend.my-ns` with the
// display name `backend` is accepted.
void check_display_name(Reporter& r, const YAML::Node& name_node, const std::string& path, const Resource& res)
{
    if (res.kind != Kind::mesh_external_service || res.name.empty()) return;
    auto it = res.labels.find(std::string(display_name_label));
    const std::string& shown = it != res.labels.end() && !it->second.empty() ? it->second : res.name;
    if (shown.size() > 63) r.error(name_node, path, "must be no more than 63 characters");
    else if (!is_rfc1035_label(shown)) r.error(name_node, path, std::string(rfc1035_label_message));
}

// The labels Kuma's control plane computes for a resource written to a zone (labels.Compute
// with mode zone): kuma.io/display-name (the name), kuma.io/mesh for a MES, kuma.io/origin:
// zone, kuma.io/zone and kuma.io/env when not given. A resource labelled with another origin
// came from elsewhere (a global control plane), and its labels are kept as written, as
// Kuma keeps those of what it syncs.
void compute_labels(Resource& res, bool kubernetes, const LoadOptions& options)
{
    if (res.kind == Kind::secret) return;
    auto& labels = res.labels;
    if (auto origin = labels.find(std::string(origin_label)); origin != labels.end() && origin->second != "zone")
        return;
    labels[std::string(display_name_label)] = res.name;
    if (res.kind == Kind::mesh_external_service) labels.try_emplace(std::string(mesh_label), res.mesh);
    labels[std::string(origin_label)] = "zone";
    labels.try_emplace("kuma.io/zone", options.zone);
    labels.try_emplace("kuma.io/env", kubernetes ? "kubernetes" : "universal");
}

void decode_body(const DecodeContext& c, Reporter& r, Fields& top, Resource& res, const YAML::Node& root, bool kubernetes)
{
    if (res.kind == Kind::secret) {
        Secret secret;
        auto data = top.take("data");
        std::string path = "data";
        if (kubernetes) {
            auto type_node = top.take("type");
            auto type = read_string(r, type_node, "type");
            if (!type || *type != secret_type)
                r.error(present(type_node) ? type_node : root, "type", "must be \"" + std::string(secret_type) + "\"");
            Fields d(r, data, "data");
            if (!d.ok() && !present(data)) r.error(root, "data", "must be defined");
            data = d.take("value");
            path = "data.value";
        }
        auto text = read_string(r, data, path);
        if (!text) {
            if (!present(data)) r.error(root, path, "must be defined");
        } else if (auto bytes = base64_decode(*text)) {
            secret.data = std::move(*bytes);
        } else {
            r.error(data, path, "must be valid base64");
        }
        res.spec = std::move(secret);
        return;
    }
    auto spec = top.take("spec");
    if (!present(spec)) {
        r.error(root, "spec", "must be defined");
        res.spec = res.kind == Kind::mesh_external_service ? decltype(res.spec)(MeshExternalService{})
                                                           : decltype(res.spec)(HostnameGenerator{});
        return;
    }
    if (res.kind == Kind::mesh_external_service) {
        MeshExternalService mes;
        detail::decode_mes(r, spec, mes, c.refs, c.options.now);
        res.spec = std::move(mes);
    } else {
        HostnameGenerator gen;
        detail::decode_hostname_generator(r, spec, gen);
        res.spec = std::move(gen);
    }
}

void decode_kubernetes(const DecodeContext& c, Reporter& r, Fields& top, Resource& res, const YAML::Node& root)
{
    auto api_node = top.take("apiVersion");
    auto api = read_string(r, api_node, "apiVersion");
    std::string_view want = res.kind == Kind::secret ? "v1" : kuma_api_version;
    if (!api || *api != want)
        r.error(present(api_node) ? api_node : root, "apiVersion", "must be \"" + std::string(want) + "\"");

    auto meta_node = top.take("metadata");
    Fields meta(r, meta_node, "metadata");
    if (!meta.ok()) {
        if (!present(meta_node)) r.error(root, "metadata", "must be defined");
        decode_body(c, r, top, res, root, true);
        return;
    }
    auto name_node = meta.take("name");
    check_name(r, present(name_node) ? name_node : meta_node, "metadata.name", res);
    auto ns = read_string(r, meta.take("namespace"), "metadata.namespace");
    res.labels = detail::read_string_map(r, meta.take("labels"), "metadata.labels");
    (void)detail::read_string_map(r, meta.take("annotations"), "metadata.annotations");
    if (auto it = res.labels.find(std::string(mesh_label)); it != res.labels.end()) res.mesh = it->second;
    else if (res.kind == Kind::hostname_generator) res.mesh.clear();  // Kuma's: of no mesh
    if (ns && !ns->empty()) res.labels.try_emplace(std::string(namespace_label), *ns);
    compute_labels(res, true, c.options);
    check_display_name(r, present(name_node) ? name_node : meta_node, "metadata.name", res);
    decode_body(c, r, top, res, root, true);
}

void decode_universal(const DecodeContext& c, Reporter& r, Fields& top, Resource& res, const YAML::Node& root)
{
    // The seed's examples carry apiVersion next to type; accept Kuma's, refuse others.
    auto api_node = top.take("apiVersion");
    if (auto api = read_string(r, api_node, "apiVersion"); api && *api != kuma_api_version)
        r.error(api_node, "apiVersion", "must be \"" + std::string(kuma_api_version) + "\"");
    auto name_node = top.take("name");
    check_name(r, present(name_node) ? name_node : root, "name", res);
    auto mesh_node = top.take("mesh");
    // A HostnameGenerator has no mesh in Kuma: it serves the MES of every mesh. One written
    // with a mesh (as mesd once required) keeps it and serves that mesh alone.
    if (res.kind == Kind::hostname_generator && !present(mesh_node)) res.mesh.clear();
    if (auto mesh = read_string(r, mesh_node, "mesh")) res.mesh = *mesh;
    res.labels = detail::read_string_map(r, top.take("labels"), "labels");
    compute_labels(res, false, c.options);
    check_display_name(r, present(name_node) ? name_node : root, "name", res);
    // Kuma bookkeeping fields that `kumactl get -o yaml` prints; harmless to accept.
    (void)top.take("creationTime");
    (void)top.take("modificationTime");
    decode_body(c, r, top, res, root, false);
}

Decoded decode_document(const LoadOptions& options, const YAML::Node& root, const std::string& file, int line_offset)
{
    Decoded out;
    Document& doc = out.document;
    DecodeContext c{options, out.refs};
    {
        Reporter r(doc, file, line_offset);
        r.set_fallback(root);
        doc.resource.mark = r.mark(root);
        if (!root.IsMap()) {
            r.error(root, "", "a resource must be a mapping with \"type\" (Universal) or \"kind\" (Kubernetes)");
        } else {
            Fields top(r, root, "");
            bool kubernetes = top.has("kind");
            auto kind_node = top.take(kubernetes ? "kind" : "type");
            auto kind_text = read_string(r, kind_node, kubernetes ? "kind" : "type");
            auto kind = kind_text ? kind_from_exact(*kind_text) : std::nullopt;
            if (!present(kind_node)) {
                r.error(root, "", "a resource needs \"type\" (Universal shape) or \"kind\" (Kubernetes shape)");
            } else if (!kind) {
                if (kind_text)
                    r.error(kind_node, kubernetes ? "kind" : "type",
                            "unknown kind " + excerpt(*kind_text) + " (expected MeshExternalService, HostnameGenerator or Secret)");
                // The rest of the document cannot be understood without its kind.
                for (auto it = root.begin(); it != root.end(); ++it)
                    if (it->first.IsScalar()) (void)top.take(it->first.Scalar());
            } else {
                doc.kind_known = true;
                doc.resource.kind = *kind;
                if (kubernetes) decode_kubernetes(c, r, top, doc.resource, root);
                else decode_universal(c, r, top, doc.resource, root);
                bool meshless = doc.resource.mesh.empty() && doc.resource.kind == Kind::hostname_generator;
                if (!meshless && !is_rfc1123_subdomain(doc.resource.mesh))
                    r.error(root, "mesh", std::string(rfc1123_subdomain_message));
            }
        }
    }  // Fields report unknown keys as they go out of scope, before the document is returned.
    return out;
}

void Loader::check_duplicates()
{
    std::map<std::tuple<Kind, std::string, std::string>, Mark> seen;
    for (auto& doc : result_.documents) {
        if (!doc.kind_known || doc.resource.name.empty()) continue;
        const auto& res = doc.resource;
        auto [it, inserted] = seen.try_emplace({res.kind, res.mesh, res.name}, res.mark);
        if (inserted) continue;
        Diagnostic d;
        d.mark = res.mark;
        d.path = "name";
        const Mark& first = it->second;
        d.message = "duplicate " + std::string(kind_name(res.kind)) + " " + res.mesh + "/" + res.name +
                    ", first defined at " + first.file + ":" + std::to_string(first.line) + ":" +
                    std::to_string(first.col);
        doc.diagnostics.push_back(std::move(d));
    }
}

void Loader::check_secret_refs()
{
    std::map<std::pair<std::string, std::string>, const Document*> secrets;
    for (const auto& doc : result_.documents)
        if (doc.kind_known && doc.resource.kind == Kind::secret)
            secrets.try_emplace({doc.resource.mesh, doc.resource.name}, &doc);

    for (std::size_t i = 0; i < result_.documents.size(); ++i) {
        auto& doc = result_.documents[i];
        for (const auto& ref : refs_[i]) {
            Reporter r(doc, ref.mark.file);
            auto it = secrets.find({doc.resource.mesh, ref.name});
            if (it != secrets.end()) {
                const Document& secret_doc = *it->second;
                if (!secret_doc.valid()) continue;  // its own errors are reported with it
                // The Secret's bytes must suit the use: a certificate for caCert, a key for clientKey.
                std::size_t before = doc.diagnostics.size();
                detail::check_pem_role(r, ref.mark, ref.path, secret_doc.resource.secret()->data, ref.role,
                                       ref.tls_enabled, options_.now);
                for (auto k = before; k < doc.diagnostics.size(); ++k)
                    doc.diagnostics[k].message = "secret " + excerpt(ref.name) + " used as " +
                                                 std::string(secret_role_word(ref.role)) + ": " +
                                                 doc.diagnostics[k].message;
                continue;
            }
            if (options_.secret_exists && options_.secret_exists(doc.resource.mesh, ref.name)) continue;
            // Not an error, as in Kuma: a MES is often applied before its Secret.
            r.warning(ref.mark, ref.path,
                      "secret " + excerpt(ref.name) + " not found in mesh " + excerpt(doc.resource.mesh) +
                          std::string(detail::refused_until(ref.tls_enabled)));
        }
    }
}

LoadResult Loader::finish()
{
    check_duplicates();
    check_secret_refs();
    for (auto& doc : result_.documents) {
        // In file order, as a reader goes through the document.
        std::ranges::stable_sort(doc.diagnostics, [](const Diagnostic& a, const Diagnostic& b) {
            return std::tie(a.mark.line, a.mark.col) < std::tie(b.mark.line, b.mark.col);
        });
        if (!doc.kind_known) continue;
        for (auto& d : doc.diagnostics) {
            d.kind = std::string(kind_name(doc.resource.kind));
            d.mesh = doc.resource.mesh;
            d.name = doc.resource.name;
        }
    }
    return std::move(result_);
}

}  // namespace

bool Sources::same_as(const Sources& other) const
{
    if (files != other.files || errors.size() != other.errors.size()) return false;
    for (std::size_t i = 0; i < errors.size(); ++i)
        if (errors[i].format() != other.errors[i].format()) return false;
    return true;
}

Sources read_sources(std::span<const std::string> paths, const LoadOptions& options)
{
    SourceReader reader(options);
    for (const auto& p : paths) reader.read_path(p);
    return reader.take();
}

LoadResult load_sources(const Sources& sources, const LoadOptions& options)
{
    Loader loader(options);
    loader.load_sources(sources);
    return loader.finish();
}

LoadResult load_paths(std::span<const std::string> paths, const LoadOptions& options)
{
    return load_sources(read_sources(paths, options), options);
}

LoadResult load_text(std::string_view text, std::string_view file_name, const LoadOptions& options)
{
    Loader loader(options);
    loader.load_text(text, std::string(file_name));
    return loader.finish();
}

}  // namespace conf
