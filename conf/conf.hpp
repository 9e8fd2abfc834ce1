// conf: the resource model of mesd — MeshExternalService, HostnameGenerator and Secret —
// read from YAML in Kuma's Universal and Kubernetes shapes and validated with Kuma's rules
// and messages, every error carrying the file position of the field it is about.
//
// Glossary
//   document    one YAML document (files may hold several, separated by `---`)
//   resource    a document that names a kind mesd knows, decoded into typed fields
//   diagnostic  an error or warning about one document, rendered as
//               `FILE:LINE:COL: KIND MESH/NAME: PATH: MESSAGE` (PATH rooted at `spec`)
//   mark        1-based line and column of a node in its file
//
// Ownership: everything here is plain values. Nothing keeps a pointer into the YAML it was
// read from, so results outlive the text and can be copied freely between threads.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <expected>
#include <functional>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

namespace conf {

// Files larger than this are refused before parsing: resources are small, and a runaway
// generator or a wrong path should get a clear message, not minutes of parsing.
inline constexpr std::size_t max_file_bytes = 32u * 1024u * 1024u;

// A document may hold at most this many YAML nodes. yaml-cpp keeps about 500 bytes per node,
// so without it a 32 MiB file of one-byte scalars (`x: [a,a,...]`) costs 8 GB; this bound
// keeps one document under about 100 MB and still allows a MES with 10,000 endpoints.
inline constexpr std::size_t max_document_nodes = 200'000;

// Offset of the first byte of `text` that is not strict UTF-8 (RFC 3629 section 3: no
// overlong forms, no surrogates, nothing past U+10FFFF), or npos.
std::size_t invalid_utf8_at(std::string_view text);

// `text` with control bytes (C0, DEL, and C1 written in UTF-8) and bytes that are not UTF-8
// written as \xNN, \n, \r, \t: what reaches a terminal or a log line cannot move the cursor,
// clear the screen or forge a line.
std::string escape_controls(std::string_view text);
// Appends `raw` as a logfmt value, as mesd's log lines and the access log write them: control
// bytes and bytes that are not UTF-8 escaped (no value can forge a line or drive a terminal),
// quoted when it holds a space, a quote, '=' or an escape.
void append_logfmt_value(std::string& out, std::string_view raw);

// `text` quoted as Go's %q quotes it: `"` and `\` escaped, control bytes as \n, \t, \xNN.
std::string go_quote(std::string_view text);

// `text` as a message echoes it: quoted, control bytes escaped, and when longer than
// `max_bytes` cut to its first bytes (at a character boundary) followed by its length, so
// that a 10 MB value costs a line, not 10 MB, in every message about it.
std::string excerpt(std::string_view text, std::size_t max_bytes = 64);

struct Mark {
    std::string file;
    int line = 0;  // 1-based; 0 when unknown
    int col = 0;   // 1-based; 0 when unknown
};

enum class Severity { error, warning };

enum class Kind { mesh_external_service, hostname_generator, secret };

// "MeshExternalService", "HostnameGenerator", "Secret".
std::string_view kind_name(Kind kind);
// Accepts the kind names above and their lowercase plurals and short forms used on the
// command line (mes, meshexternalservices, hostnamegenerators, secrets...).
std::optional<Kind> kind_from_string(std::string_view text);

struct Diagnostic {
    Severity severity = Severity::error;
    Mark mark;
    std::string kind;     // empty when the document's kind is unknown
    std::string mesh;
    std::string name;
    std::string path;     // e.g. "spec.endpoints[1].port"; empty for the whole document
    std::string message;

    // `FILE:LINE:COL: [warning: ]KIND MESH/NAME: PATH: MESSAGE`, leaving out what is unknown.
    std::string format() const;
};

// ---- MeshExternalService ----------------------------------------------------------------

enum class Protocol { tcp, grpc, http, http2 };
enum class TlsVersion { tls_auto, tls10, tls11, tls12, tls13 };
enum class VerificationMode { secured, skip_san, skip_ca, skip_all };
enum class SanMatch { exact, prefix };
enum class AddressKind { ipv4, ipv6, hostname, unix_socket };

std::string_view protocol_name(Protocol p);        // "tcp", "grpc", ...
std::string_view tls_version_name(TlsVersion v);   // "TLSAuto", "TLS10", ...
std::string_view verification_mode_name(VerificationMode m);  // "Secured", "SkipSAN", ...
std::string_view san_match_name(SanMatch m);       // "Exact", "Prefix"

struct DataSource {
    enum class Type { inline_bytes, inline_string, secret };
    Type type = Type::inline_bytes;
    // inline_bytes: the decoded bytes; inline_string: the text; secret: the Secret's name.
    std::string value;
    // How it was written, so that it is shown back the same way: the seed's `inline`,
    // `inlineString`, `secret`, or Kuma's current `{type: InsecureInline, insecureInline:
    // {value}}` (an inline_string) and `{type: Secret, secretRef: {kind: Secret, name}}`.
    enum class Shape { seed, kuma };
    Shape shape = Shape::seed;
    bool operator==(const DataSource&) const = default;
};

struct Endpoint {
    std::string address;       // as written; for unix sockets the full `unix:///path`
    AddressKind kind = AddressKind::hostname;
    std::optional<std::uint16_t> port;  // absent: the port the client dialled
    std::uint8_t priority = 0;          // 0-128, lower is tried first

    // The filesystem path of a unix socket endpoint (after `unix://`), else empty.
    std::string_view unix_path() const;
    bool operator==(const Endpoint&) const = default;
};

struct SubjectAltName {
    SanMatch type = SanMatch::exact;
    std::string value;
    bool operator==(const SubjectAltName&) const = default;
};

struct Tls {
    bool enabled = false;
    TlsVersion min = TlsVersion::tls_auto;
    TlsVersion max = TlsVersion::tls_auto;
    bool allow_renegotiation = false;
    VerificationMode mode = VerificationMode::secured;
    std::string server_name;  // empty: none given
    std::vector<SubjectAltName> subject_alt_names;
    std::optional<DataSource> ca_cert;
    std::optional<DataSource> client_cert;
    std::optional<DataSource> client_key;
    bool operator==(const Tls&) const = default;
};

// Kuma's `spec.extension` of a MES or HostnameGenerator: in Kuma, the configuration of a
// control plane plugin that takes the resource over. mesd runs no plugins: it checks the
// extension as Kuma does, keeps it so that it is shown back as written, and otherwise
// ignores it (a MES with one is still served from its own endpoints and TLS).
struct Extension {
    std::string type;
    // The free-form `config`, as YAML in flow style (JSON-like); nullopt when absent.
    std::optional<std::string> config;
    bool operator==(const Extension&) const = default;
};

struct MeshExternalService {
    std::optional<std::uint16_t> port;  // match.port; absent: every port of the VIP
    Protocol protocol = Protocol::tcp;  // match.protocol
    std::vector<Endpoint> endpoints;
    std::optional<Tls> tls;
    std::optional<Extension> extension;
};

// The Secrets a MES's TLS refers to by name (caCert, clientCert, clientKey).
std::vector<std::string> referenced_secrets(const MeshExternalService& mes);

// ---- HostnameGenerator ------------------------------------------------------------------

// The subset of Go's text/template that Kuma's generators use: literal text, the fields
// .Name .DisplayName .Namespace .Mesh .Zone, the function `label "key"`, and `{{-`/`-}}`.
class Template {
public:
    struct Values {
        std::string name;
        std::string display_name;
        std::string namespace_;
        std::string mesh;
        std::string zone;
        std::map<std::string, std::string> labels;
    };

    // Parses `text`; on failure returns the message in Go's words where Go has them
    // (`template: :1: unclosed action`), or names the unsupported construct.
    static std::expected<Template, std::string> parse(std::string_view text);

    // Renders with `values`; fails as Go's Execute fails, in its words, for a missing label
    // (`template: :1:3: executing "" at <label "k">: error calling label: label k not found`)
    // and a field the values do not have (`... at <.Foo>: can't evaluate field Foo in type ...`).
    std::expected<std::string, std::string> render(const Values& values) const;
    const std::string& source() const { return source_; }

    struct Piece {
        enum class Type { text, name, display_name, namespace_, mesh, zone, label, unknown_field };
        Type type = Type::text;
        std::string text;  // literal text, the label key, or the unknown field's name
        // Where the action's command starts (Go's line and 0-based byte in the line) and the
        // command as Go prints it (`label "k"`, `.Foo`), for render errors.
        int line = 0;
        int col = 0;
        std::string context;
    };
    const std::vector<Piece>& pieces() const { return pieces_; }

private:
    std::string source_;
    std::vector<Piece> pieces_;
};

struct HostnameGenerator {
    // True when the selector is `meshExternalService`; other selector kinds are accepted
    // and select nothing here.
    bool selects_mesh_external_services = false;
    std::map<std::string, std::string> match_labels;  // empty matches every MES
    std::string template_text;
    std::optional<Extension> extension;
};

// ---- Secret -----------------------------------------------------------------------------

struct Secret {
    std::string data;  // decoded bytes; never printed
};

// ---- Resources and loading --------------------------------------------------------------

struct Resource {
    Kind kind = Kind::mesh_external_service;
    // A HostnameGenerator's is empty unless written with one: it then serves every mesh.
    std::string mesh = "default";
    std::string name;
    std::map<std::string, std::string> labels;
    Mark mark;  // where the document starts
    std::variant<MeshExternalService, HostnameGenerator, Secret> spec;

    const MeshExternalService* mes() const { return std::get_if<MeshExternalService>(&spec); }
    const HostnameGenerator* generator() const { return std::get_if<HostnameGenerator>(&spec); }
    const Secret* secret() const { return std::get_if<Secret>(&spec); }
};

// One document of the input with what was learnt of it.
struct Document {
    Resource resource;  // kind, mesh and name are filled as far as they could be read
    bool kind_known = false;
    std::vector<Diagnostic> diagnostics;

    bool valid() const;  // no error among the diagnostics (warnings allowed)
};

struct LoadOptions {
    // Whether a Secret exists outside the input (in the store); unset: nowhere else.
    std::function<bool(std::string_view mesh, std::string_view name)> secret_exists;
    // "Now" for certificate expiry warnings.
    std::chrono::system_clock::time_point now = std::chrono::system_clock::now();
    // The zone this program is (config `zone`): the value of the label kuma.io/zone it gives
    // what is written to it, and of {{ .Zone }} for a MES without that label.
    std::string zone = "default";
    // Whether a symbolic link inside a directory may lead out of it. Off: such a link is an
    // error, so a link to /etc/shadow is never read (links to `..data/`, the Kubernetes
    // ConfigMap scheme, stay inside). mesctl --follow-links, mesd --conf-dir-follow-links.
    bool follow_outside_links = false;
};

// The bytes of the YAML files under some paths as read in one pass, before any parsing.
// In a directory with a `..data` link (a Kubernetes ConfigMap or Secret mount) the link is
// resolved once and the versioned directory it names is read, so that a pass never mixes two
// versions; files keep the names they have through the user-visible links.
struct Sources {
    struct File {
        std::string name;  // as reported in diagnostics
        std::string text;
        bool operator==(const File&) const = default;
    };
    std::vector<File> files;
    std::vector<Diagnostic> errors;  // entries that cannot be read: the input is unusable
    std::vector<std::string> unreadable;
    // Same files, same bytes, same errors: two passes that agree saw one state.
    bool same_as(const Sources& other) const;
};

Sources read_sources(std::span<const std::string> paths, const LoadOptions& options = {});

struct LoadResult {
    std::vector<Document> documents;
    // Problems that belong to no document: unreadable paths, YAML syntax, size limits.
    std::vector<Diagnostic> file_errors;
    // Paths that could not be read at all (also reported in file_errors).
    std::vector<std::string> unreadable;

    bool ok() const;  // no file error and every document valid
    std::size_t error_count() const;
};

// Reads every path: a file as it is, a directory as its `*.yaml` and `*.yml` files (walked
// recursively, in name order; hidden entries skipped). An entry of a directory that cannot be
// read (unreadable, a dangling link, a FIFO named *.yaml, a link out of it) is an error. Documents are validated one by one, then across the input
// (duplicate names, references to Secrets).
LoadResult load_paths(std::span<const std::string> paths, const LoadOptions& options = {});
// Parses and validates what read_sources read; touches no file.
LoadResult load_sources(const Sources& sources, const LoadOptions& options = {});

// The same for text already in memory, reported as coming from `file_name`.
LoadResult load_text(std::string_view text, std::string_view file_name,
                     const LoadOptions& options = {});

// ---- Names ------------------------------------------------------------------------------

// How much of a rendered hostname a message quotes: every name DNS could hold, in full.
inline constexpr std::size_t hostname_excerpt_bytes = 300;

// RFC 1035 label as Kubernetes checks it: [a-z]([-a-z0-9]*[a-z0-9])?, at most 63 characters.
bool is_rfc1035_label(std::string_view s);
// Lowercase RFC 1123 subdomain: dot-separated [a-z0-9]([-a-z0-9]*[a-z0-9])?, at most 253.
bool is_rfc1123_subdomain(std::string_view s);
// What Kubernetes' IsDNS1123Subdomain (which Kuma's generators use) says against `s`, in its
// words and order, plus "each label must be no more than 63 characters" (not Kubernetes'
// check: DNS cannot carry such a name); empty when `s` is a valid hostname.
std::vector<std::string> dns1123_subdomain_violations(std::string_view s);
// The messages above joined with ", ", as Kuma joins them.
std::string join_violations(const std::vector<std::string>& violations);
// A DNS host name as Kuma's validator accepts it (letters of either case, digits, '-',
// '_', labels of 1-63, at most 253 characters, an optional trailing dot).
bool is_dns_name(std::string_view s);
std::optional<AddressKind> ip_literal_kind(std::string_view s);

// Kubernetes' messages for the checks above.
extern const std::string_view rfc1035_label_message;
extern const std::string_view rfc1123_subdomain_message;

// Strict base64 (RFC 4648 alphabet with padding; ASCII white space ignored).
std::optional<std::string> base64_decode(std::string_view text);
std::string base64_encode(std::string_view bytes);

}  // namespace conf

// ---- Configuration file -----------------------------------------------------------------

namespace conf {

using Duration = std::chrono::milliseconds;

// An address to listen on or send to: an IP literal (empty: every address) and a port.
struct HostPort {
    std::string host;
    std::uint16_t port = 0;
    std::string to_string() const;  // "127.0.0.1:53", "[::1]:53", ":53"
};
// "ADDR:PORT", "[V6]:PORT" or ":PORT"; nullopt when malformed.
std::optional<HostPort> parse_host_port(std::string_view text);
// Go-style durations: "30s", "1h", "1m30s", "500ms".
std::optional<Duration> parse_duration(std::string_view text);
std::string format_duration(Duration d);

// The most `workers` a configuration may ask for, and the default's ceiling on larger
// machines: HAProxy's thread limit. Each worker may hold a store reader slot at a time (of
// LMDB's 126, shared with mesctl and the control loop).
constexpr std::uint32_t max_workers = 64;

// The file both programs read (`--config FILE`, else $MESD_CONFIG, else these defaults).
struct Config {
    std::string data_dir = "/var/lib/mesd";
    std::vector<std::string> meshes = {"default"};
    // The zone mesd is, as a Kuma zone control plane is named (Kuma's multizone.zone.name,
    // "default" as there): the label kuma.io/zone of what is written here, and {{ .Zone }}
    // of a MES without one.
    std::string zone = "default";
    // Kuma's default HostnameGenerators for MES (on unless defaults.skipHostnameGenerators,
    // as in Kuma): see store::default_generators.
    bool default_hostname_generators = true;
    // Threads serving DNS and the proxy, each with its own loop; 0: one per CPU mesd may run
    // on (sched_getaffinity), as Knot's udp-workers and HAProxy's nbthread default to. 1 keeps
    // everything on the one loop.
    std::uint32_t workers = 0;
    // "auto": worker i pinned to the i-th CPU mesd may run on (as HAProxy's cpu-map does
    // when asked); "none": left to the scheduler, as Knot and NSD leave theirs.
    std::string worker_affinity = "none";
    // Least privilege (cmd/privilege.hpp), read at start only. `user`: NAME or NAME:GROUP
    // (Knot's server.user form); started as root, mesd binds its sockets, then runs as that
    // user with only the capabilities its configuration needs. "": stays who it was started as.
    std::string user;
    // A seccomp allow-list and no_new_privs once start-up is done (cmd/sandbox.hpp).
    bool sandbox = false;
    struct Dns {
        std::vector<HostPort> listen = {HostPort{"127.0.0.1", 15053}};
        std::vector<std::string> zones = {"mesh."};
        Duration ttl = std::chrono::seconds(30);
        Duration negative_ttl = std::chrono::seconds(30);
        std::uint16_t edns_udp_size = 1232;
        Duration tcp_idle_timeout = std::chrono::seconds(10);
        std::uint32_t tcp_max_clients = 1024;  // open TCP connections at once
        // The rest of a TCP message once its first byte is in, and a reply's time unsent
        // (Knot's tcp-io-timeout and its default).
        Duration tcp_io_timeout = std::chrono::milliseconds(500);
        // Open TCP connections from one client address; 0: no cap (Unbound's
        // tcp-connection-limit and dnsdist's setMaxTCPConnectionsPerClient set none either).
        std::uint32_t tcp_max_clients_per_ip = 0;
        struct Forward {
            bool enabled = true;
            std::vector<HostPort> upstreams;  // empty: nameservers of /etc/resolv.conf
            Duration timeout = std::chrono::seconds(2);
            std::vector<std::string> allow = {"127.0.0.0/8",    "::1/128",        "10.0.0.0/8",
                                              "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"};
            std::uint32_t max_in_flight = 4096;  // upstream queries outstanding at once
            // The longest a client waits for a forwarded answer, every upstream tried included.
            // 1.8 s as Unbound's serve-expired-client-timeout (RFC 8767 section 5's client
            // response timer): a SERVFAIL well before glibc's 5 s retry.
            Duration max_wait = std::chrono::milliseconds(1800);
        } forward;
        // UDP response rate limiting per source prefix; the defaults are Knot DNS's: off, /24
        // and /56 groups, every limited answer slipped as TC, a table of 393241 buckets.
        struct RateLimit {
            std::uint32_t responses_per_second = 0;  // 0: off
            std::uint32_t burst = 0;                 // 0: responsesPerSecond
            std::uint32_t slip = 1;
            std::uint32_t ipv4_prefix_length = 24;
            std::uint32_t ipv6_prefix_length = 56;
            std::uint32_t table_size = 393241;
            std::vector<std::string> exempt = {"127.0.0.0/8", "::1/128"};
        } rate_limit;
    } dns;
    struct Vip {
        std::string ipv4 = "242.0.0.0/8";
        std::string ipv6;  // empty: no AAAA
        Duration quarantine = std::chrono::hours(1);
    } vip;
    struct Proxy {
        std::string mode = "bind";  // or "redirect"
        HostPort redirect_listen = HostPort{"127.0.0.1", 15001};
        Duration connect_timeout = std::chrono::seconds(5);
        Duration idle_timeout = std::chrono::hours(1);
        std::uint32_t max_connections = 100000;
        // Written in the file: mesd warns when it must lower it to fit the descriptor limit
        // (otherwise it is derived from that limit, up to the default above).
        bool max_connections_set = false;
        std::uint32_t max_connections_per_service = 0;  // 0: only the global limit
        std::uint32_t upstream_mark = 0;  // SO_MARK on connections to endpoints (redirect rules skip it); 0: none
        std::uint32_t connect_attempts = 3;             // endpoints tried per client connection
        std::uint32_t eject_after = 3;                  // consecutive connect failures
        Duration eject_base = std::chrono::seconds(5);  // doubles with each ejection in a row
        Duration eject_max = std::chrono::minutes(5);
        std::vector<HostPort> resolvers;  // for DNS-named endpoints; empty: the DNS upstreams
        Duration resolve_timeout = std::chrono::seconds(2);
        Duration dns_min_ttl = std::chrono::seconds(1);
        Duration dns_max_ttl = std::chrono::minutes(5);
        std::string hosts_file = "/etc/hosts";  // read before DNS for DNS-named endpoints; "": none
        // Active health checks of every endpoint address (proxy.healthCheck); the label
        // mesd.io/health-check turns them on or off for one MES.
        struct HealthCheck {
            bool enabled = false;  // `interval` given, or `enabled: true`
            Duration interval = std::chrono::seconds(10);
            Duration timeout = std::chrono::seconds(2);
            std::uint32_t healthy_threshold = 2;
            std::uint32_t unhealthy_threshold = 3;
        } health_check;
        // One line per proxied connection when it ends; `path` empty: off.
        struct AccessLog {
            std::string path;              // "stdout", "stderr" or a file (appended to, reopened on SIGHUP)
            std::string format = "logfmt";  // or "json"
        } access_log;
    } proxy;
    struct Admin {
        HostPort listen = HostPort{"127.0.0.1", 9901};
    } admin;
    struct Log {
        std::string level = "info";  // debug|info|warn|error
    } log;
    // Cluster mode: etcd holds the resources and VIPs; this node mirrors them into its store.
    struct Cluster {
        bool enabled = false;   // the file has a `cluster` section (or endpoints came by flag)
        std::string node_name;  // empty: the host name
        struct Etcd {
            std::vector<std::string> endpoints;  // http(s)://HOST:PORT or HOST:PORT
            std::string prefix = "/mesd/";
            bool tls = false;  // a `tls` section is present
            std::string ca_file;
            std::string cert_file;
            std::string key_file;
            std::string username;
            std::string password;
            Duration dial_timeout = std::chrono::seconds(2);      // etcd clientv3's DialTimeout in etcdctl
            Duration request_timeout = std::chrono::seconds(5);  // etcdctl's --command-timeout
        } etcd;
    } cluster;
};

// An etcd endpoint as the configuration takes it: http://HOST:PORT, https://HOST:PORT or
// HOST:PORT, HOST an IP literal ([v6]) or a DNS name.
bool valid_etcd_endpoint(std::string_view text);
// A `user` setting: NAME or NAME:GROUP, each as useradd(8) takes them.
bool is_user_spec(std::string_view s);
// A cluster node name: 1-253 letters, digits, '.', '-' or '_' (it names an etcd key).
bool is_node_name(std::string_view s);

struct ConfigResult {
    Config config;
    std::vector<Diagnostic> errors;  // `FILE:LINE:COL: PATH: MESSAGE`
    bool ok() const { return errors.empty(); }
};

ConfigResult load_config_text(std::string_view text, std::string_view file_name);
ConfigResult load_config_file(const std::string& path);

// Resolves the configuration the way both programs do: `path` when given, else
// $MESD_CONFIG when set, else the defaults; then $MESD_DATA_DIR over dataDir.
ConfigResult load_config(const std::optional<std::string>& path);

// Every key of the configuration file as a dotted path ("dns.forward.upstreams"), sections
// included ("dns", "dns.forward"), sorted: taken from the reader itself, so the list is what
// the file accepts and everything else is refused as an unknown field.
const std::vector<std::string>& config_keys();

// Turns cluster mode on with the comma-separated etcd endpoints of a flag or variable
// (`source` names it in errors).
void set_etcd_endpoints(ConfigResult& result, std::string_view list, std::string_view source);

// What a reload of the configuration file changed: one entry per key whose value differs,
// in the order of reload_keys(). `live`: the running daemon takes the new value (SIGHUP);
// otherwise it keeps the old one until a restart. Secret values (cluster.etcd.password)
// read "(hidden)" on both sides.
struct ConfigChange {
    std::string key;  // as written in the file: "dns.ttl", "proxy.accessLog.path"
    std::string old_value, new_value;
    bool live = false;
};
// Every key reload_changes() compares, with whether it changes live.
struct ConfigKey {
    std::string_view key;
    bool live;
};
std::span<const ConfigKey> reload_keys();
std::vector<ConfigChange> reload_changes(const Config& running, const Config& loaded);

}  // namespace conf

// ---- Hostname generation ----------------------------------------------------------------

namespace conf {

// Kuma's condition on a MES for one HostnameGenerator: type "Generated", status
// "True"/"False", reason "Generated" | "Collision" | "TemplateError".
struct Condition {
    std::string type = "Generated";
    std::string status;
    std::string reason;
    std::string message;
    bool operator==(const Condition&) const = default;
};

struct GeneratedAddress {
    std::string hostname;
    std::string origin = "HostnameGenerator";
    std::string generator;  // hostnameGeneratorRef.coreName
    bool operator==(const GeneratedAddress&) const = default;
};

struct GeneratorStatus {
    std::string generator;
    std::vector<Condition> conditions;
    bool operator==(const GeneratorStatus&) const = default;
};

// The hostname part of a MES status, as Kuma keeps it.
struct HostnameStatus {
    std::vector<GeneratedAddress> addresses;     // sorted by generator name
    std::vector<GeneratorStatus> generators;     // sorted by generator name
    bool operator==(const HostnameStatus&) const = default;
};

// A resource with its creation order: older (smaller) wins a hostname collision.
struct Ordered {
    const Resource* resource = nullptr;
    std::uint64_t created = 0;
};

// Who holds `hostname` among MES left out of a generation (see generate_hostnames), asked
// while `generator` renders it for one of the services given; nullopt: nobody.
using ClaimedBy =
    std::function<std::optional<std::string>(const std::string& hostname, const Resource& generator)>;

// Where a generator comes in a generation, as Kuma sorts them: those labelled
// `kuma.io/origin: zone` first, then by creation, then by name. (Services are sorted by
// creation and name alone.)
struct GenerationOrder {
    bool later_origin = false;  // not labelled kuma.io/origin: zone
    std::uint64_t created = 0;
    std::string name;
    auto operator<=>(const GenerationOrder&) const = default;
};
GenerationOrder order_key(const Ordered& item);

// Applies every generator to every MES of one mesh that it selects, in Kuma's order
// (generators by order_key, services by creation then name; the first claimant of a
// hostname keeps it). Returns one status per entry of `services`, in the same order.
// `local_zone` stands for {{ .Zone }} when a MES has no kuma.io/zone label.
// `claimed_by` lets a store generate for its new MES alone: names it answers for are taken
// (Collision naming the holder) unless one of `services` claimed them first in this call.
// The answer is only right when the holder claimed the name before `generator` would
// have in a generation over every MES; the caller checks that.
std::vector<HostnameStatus> generate_hostnames(std::span<const Ordered> generators,
                                               std::span<const Ordered> services,
                                               const ClaimedBy& claimed_by = {},
                                               std::string_view local_zone = {});

// The values a template sees for `mes`, as Kuma's EvaluateTemplate gives them: .Name, .DisplayName
// (label kuma.io/display-name, else the name), .Namespace (label k8s.kuma.io/namespace),
// .Mesh, .Zone (label kuma.io/zone, else `local_zone`), and the labels.
Template::Values template_values(const Resource& mes, std::string_view local_zone = {});

// Kuma's default HostnameGenerators for MES, as a zone has them (pkg/defaults,
// EnsureHostnameGeneratorExists): `local-mesh-external-service`, labelled kuma.io/origin: zone,
// naming the MES written to this zone `{{ .DisplayName }}.extsvc.mesh.local`; and
// `synced-mesh-external-service`, which a global control plane creates and syncs to its
// zones (labelled kuma.io/origin: global there), naming the MES synced from it the same way.
// Both of no mesh. Created when missing (config defaultHostnameGenerators, on by default as
// Kuma's defaults.skipHostnameGenerators is off), never overwritten.
std::vector<Resource> default_hostname_generators();
// The DNS zone their names fall in; mesd answers for it while they are on.
inline constexpr std::string_view default_generators_zone = "extsvc.mesh.local.";

// Kuma's message for a rendered hostname that is not one (`generated hostname "X" is not a
// valid DNS name: ...`); empty when it is valid.
std::string hostname_error(std::string_view hostname);

// ---- TLS readiness ----------------------------------------------------------------------

// Kuma accepts a MES whose Secret does not exist yet, or whose PEM does not parse (applying a
// MES before its Secret is a common GitOps order); so does mesd, and says why its TLS cannot
// be used in this condition, worked out from what is stored now (so it clears the moment the
// Secret arrives). Type "TLSReady"; status "True" with reason "Ready", or "False" with
// reason "SecretNotFound" | "InvalidCertificate" | "InvalidPrivateKey" | "KeyMismatch" (the
// first problem) and a message naming every problem by field.
//
// A Secret's bytes by name in the MES's mesh; nullopt: no such Secret.
using SecretBytes = std::function<std::optional<std::string>(std::string_view name)>;
// nullopt when TLS is not enabled (no data source is read then).
std::optional<Condition> tls_condition(const MeshExternalService& mes, const SecretBytes& secret,
                                       std::chrono::system_clock::time_point now = std::chrono::system_clock::now());
inline constexpr std::string_view tls_condition_type = "TLSReady";

}  // namespace conf
