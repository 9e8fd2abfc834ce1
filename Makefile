# mesd — a thin wrapper over CMake. `make` builds, `make test` installs what is missing,
# builds and runs every test; `make run` starts mesd on conf/examples/.
BUILD_DIR      ?= build
SANITIZE_DIR   ?= build-sanitize
TSAN_DIR       ?= build-tsan
BUILD_TYPE     ?= RelWithDebInfo
JOBS           ?= $(shell nproc)
CMAKE_FLAGS    ?=

# Debian packages: to build, and what the tests drive as real clients and peers.
BUILD_PACKAGES := build-essential cmake pkg-config libldns-dev libuv1-dev libyaml-cpp-dev libhttp-parser-dev libnghttp2-dev \
                  libssl-dev liblmdb-dev catch2 nlohmann-json3-dev \
                  libcap-dev libseccomp-dev
TEST_PACKAGES  := openssl dnsutils knot-dnsutils knot ldnsutils dnsmasq-base iproute2 iptables socat netcat-openbsd curl nginx-light python3-grpcio nghttp2-client util-linux etcd-server etcd-client mandoc man-db zsh chromium
# libFuzzer comes with clang; the DNS benchmark drives Knot and NSD with dnsperf.
# (clang 16 for fuzz-conf: clang 14 cannot build libstdc++ 12's std::variant of types with
# destructors once concepts are announced, as conf's resources are.)
FUZZ_PACKAGES  := clang libclang-rt-14-dev libfuzzer-14-dev clang-16 libclang-rt-16-dev
BENCH_PACKAGES := dnsperf knot nsd wrk iperf3 haproxy nginx-light
PACKAGES       := $(BUILD_PACKAGES) $(TEST_PACKAGES) $(FUZZ_PACKAGES)

.PHONY: all build deps bench-deps test test-sanitize sanitize tsan test-tsan fuzz-dns fuzz-conf run clean bench bench-store bench-dns bench-dns-types bench-proxy bench-tls bench-soak

all: build

# Installs only what dpkg does not already have, so a second run costs a few milliseconds.
deps:
	@missing=$$(for p in $(PACKAGES); do \
	    dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; \
	  done); \
	if [ -n "$$missing" ]; then \
	  echo "installing missing packages:" $$missing; \
	  sudo=; [ "$$(id -u)" -eq 0 ] || sudo=sudo; \
	  $$sudo apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq --no-install-recommends $$missing; \
	fi

$(BUILD_DIR)/CMakeCache.txt:
	cmake -S . -B $(BUILD_DIR) -DCMAKE_BUILD_TYPE=$(BUILD_TYPE) $(CMAKE_FLAGS)

build: deps $(BUILD_DIR)/CMakeCache.txt
	cmake --build $(BUILD_DIR) -j $(JOBS)

# Every test with mesd on one loop, then the tests that start mesd again with four workers
# (MESD_WORKERS, which every mesd they start reads): the whole suite holds either way.
WORKER_TESTS ?= ^(dns|proxy|cmd):
test: build
	MESD_WORKERS=1 ctest --test-dir $(BUILD_DIR) --output-on-failure -j $(JOBS)
	MESD_WORKERS=4 ctest --test-dir $(BUILD_DIR) --output-on-failure -j $(JOBS) -R '$(WORKER_TESTS)'

$(SANITIZE_DIR)/CMakeCache.txt:
	cmake -S . -B $(SANITIZE_DIR) -DCMAKE_BUILD_TYPE=Debug -DMESD_SANITIZE=ON $(CMAKE_FLAGS)

sanitize: deps $(SANITIZE_DIR)/CMakeCache.txt
	cmake --build $(SANITIZE_DIR) -j $(JOBS)

# The same tests under AddressSanitizer and UndefinedBehaviorSanitizer, mesd on four workers
# (the threads are what the one-loop run does not exercise).
test-sanitize: sanitize
	MESD_WORKERS=4 ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	  ctest --test-dir $(SANITIZE_DIR) --output-on-failure -j $(JOBS)

# The DNS server, the proxy and the workers under ThreadSanitizer, and the daemon's tests of
# descriptor limits and the conf dir (the control loop applying while workers serve), with
# the real mesd on TSAN_WORKERS threads (mesd reads MESD_WORKERS). Only the
# executables these need are built. ThreadSanitizer runs code 5 to 15 times slower: tests
# that bound wall-clock time under load (TSAN_SKIP) are left out, as they would fail for
# that, and those that need time within a window (TSAN_ALONE) run after the others, one at a
# time. Each report goes to $(TSAN_DIR)/tsan-reports/ rather than stderr, where a report from
# mesd would land in the log in a test's temporary dir, or pass unseen when the test stops
# mesd without reading its exit status; any report fails the target and is printed.
# halt_on_error stops a process at its first report. .ci/tsan.supp lists races inside
# uninstrumented libraries only, each with why.
TSAN_TESTS   ?= ^(dns|proxy|workers):|^cmd:(limits: |.*conf dir|reload: |admin http: |notify: |status page: (served|a thousand))
TSAN_SKIP    ?= ^cmd:(a conf dir file of 80000 keys|DNS is answered within 100 ms)
TSAN_ALONE   ?= ^cmd:a [.][.]data flip racing conf dir reloads
TSAN_WORKERS ?= 4
TSAN_SUPP    := $(CURDIR)/.ci/tsan.supp
TSAN_REPORTS  = $(abspath $(TSAN_DIR))/tsan-reports

$(TSAN_DIR)/CMakeCache.txt:
	cmake -S . -B $(TSAN_DIR) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMESD_TSAN=ON $(CMAKE_FLAGS)

tsan: deps $(TSAN_DIR)/CMakeCache.txt
	cmake --build $(TSAN_DIR) -j $(JOBS) --target mesd mesctl test_dns test_proxy test_workers test_cmd

# ctest runs in a session of its own: a test process that ThreadSanitizer halts leaves the
# mesd it started running (holding its ports and VIPs), and what is left in the session when
# ctest is done is stopped and named.
test-tsan: tsan
	@rm -rf $(TSAN_REPORTS) && mkdir -p $(TSAN_REPORTS)
	@rc=0; \
	MESD_WORKERS=$(TSAN_WORKERS) TESTS='$(TSAN_TESTS)' SKIP='$(TSAN_SKIP)' ALONE='$(TSAN_ALONE)' \
	TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1 log_path=$(TSAN_REPORTS)/report suppressions=$(TSAN_SUPP)" \
	setsid --wait sh -c 'ctest --test-dir $(TSAN_DIR) --output-on-failure -j $(JOBS) -R "$$TESTS" -E "$$SKIP|$$ALONE"; rc=$$?; \
	  ctest --test-dir $(TSAN_DIR) --output-on-failure -R "$$ALONE" || rc=1; \
	  left=$$(ps -o pid=,ppid=,comm=,args= -g $$$$ | awk -v me=$$$$ '"'"'$$1 != me && $$2 != me && $$3 != "ps" && $$3 != "awk"'"'"'); \
	  if [ -n "$$left" ]; then echo "test-tsan: stopping what the tests left running:"; echo "$$left"; trap "" TERM; kill -TERM 0; fi; \
	  exit $$rc' || rc=$$?; \
	reports=$$(ls $(TSAN_REPORTS)); \
	if [ -n "$$reports" ]; then \
	  for r in $$reports; do echo "=== ThreadSanitizer: $$r"; cat "$(TSAN_REPORTS)/$$r"; done; \
	  echo "test-tsan: $$(echo $$reports | wc -w) process(es) reported, reports in $(TSAN_REPORTS)"; rc=1; \
	fi; \
	exit $$rc

# The DNS query handler under libFuzzer for FUZZ_SECONDS, starting from the seed corpus.
# New inputs go to a scratch corpus; a crash leaves its input in $(FUZZ_DIR) and fails.
# clang 14 announces concepts as 201907 and libstdc++ 12 then hides <expected>; the parts of
# it the responder's headers use compile with clang 14, so the level is raised by hand.
FUZZ_DIR     ?= build-fuzz
FUZZ_SECONDS ?= 60
fuzz-dns: deps
	@mkdir -p $(FUZZ_DIR)/corpus
	clang++ -std=c++2b -D__cpp_concepts=202002L -Wno-macro-redefined -g -O1 \
	  -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all -I. \
	  test/dns/fuzz_responder.cpp dns/responder.cpp vip/vip.cpp -lldns -o $(FUZZ_DIR)/fuzz_responder
	$(FUZZ_DIR)/fuzz_responder -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 \
	  -artifact_prefix=$(FUZZ_DIR)/ $(FUZZ_DIR)/corpus test/dns/fuzz-corpus

# Reading resources under libFuzzer for FUZZ_SECONDS: any bytes as a YAML file, through
# parsing, both document shapes, validation and hostname generation (test/conf/fuzz_conf.cpp
# says what must hold). Seeded with conf/examples/, conf/kuma-examples/ and every Kuma case (test/conf/kuma/, and
# test/conf/fuzz-corpus/, the same cases as whole documents); new inputs go to a scratch
# corpus, a crash leaves its input in $(FUZZ_DIR) and fails.
FUZZ_CONF_SOURCES := $(wildcard conf/*.cpp)
FUZZ_CONF_CXX     ?= clang++-16
fuzz-conf: deps
	@mkdir -p $(FUZZ_DIR)/conf-corpus
	$(FUZZ_CONF_CXX) -std=c++2b -D__cpp_concepts=202002L -Wno-macro-redefined -g -O1 \
	  -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all -I. \
	  test/conf/fuzz_conf.cpp $(FUZZ_CONF_SOURCES) -lyaml-cpp -lssl -lcrypto -o $(FUZZ_DIR)/fuzz_conf
	$(FUZZ_DIR)/fuzz_conf -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 -max_len=65536 \
	  -artifact_prefix=$(FUZZ_DIR)/conf- $(FUZZ_DIR)/conf-corpus test/conf/fuzz-corpus conf/examples conf/kuma-examples test/conf/kuma

# Starts mesd in the foreground on conf/examples/ (applied into .data/store); Ctrl-C stops it.
run: build
	@echo "mesd: serving conf/examples/ on 127.0.0.1:15053 (admin on 127.0.0.1:9901). Try:"
	@echo "  dig @127.0.0.1 -p 15053 mes-http.mesh"
	@echo "  dig @127.0.0.1 -p 15053 mes-http.mesh TXT +short"
	@echo "  dig @127.0.0.1 -p 15053 -x 127.242.0.3"
	@echo "  curl -s 127.0.0.1:9901/config"
	@echo "  $(BUILD_DIR)/cmd/mesctl --config conf/mesd-run.yaml get mes"
	$(BUILD_DIR)/cmd/mesd --config conf/mesd-run.yaml --conf-dir conf/examples

# `make install` (PREFIX=/usr/local, DESTDIR honoured): mesd and mesctl, the man pages of man/,
# mesctl's bash and zsh completion (written by the mesctl just built), the systemd unit (its
# paths filled in from dist/mesd.service.in), the sysusers.d and tmpfiles.d snippets that
# create user mesd and /var/lib/mesd, and an example /etc/mesd/mesd.yaml, written only when
# there is none. mesd goes to sbin, as Knot, NSD, Unbound and HAProxy put their daemons: it
# is started by the service manager or an administrator, not by users. Only mesd and mesctl
# are built first (nothing when they are up to date); the tests and benchmarks are not needed.
PREFIX       ?= /usr/local
DESTDIR      ?=
BINDIR       ?= $(PREFIX)/bin
SBINDIR      ?= $(PREFIX)/sbin
MANDIR       ?= $(PREFIX)/share/man
DOCDIR       ?= $(PREFIX)/share/doc/mesd
BASHCOMPDIR  ?= $(PREFIX)/share/bash-completion/completions
ZSHCOMPDIR   ?= $(PREFIX)/share/zsh/site-functions
UNITDIR      ?= $(PREFIX)/lib/systemd/system
SYSUSERSDIR  ?= $(PREFIX)/lib/sysusers.d
TMPFILESDIR  ?= $(PREFIX)/lib/tmpfiles.d
SYSCONFDIR   ?= /etc
MESCTL       ?= $(BUILD_DIR)/cmd/mesctl
MAN_PAGES    := $(wildcard man/*.[158])

.PHONY: install install-build uninstall
install-build: $(BUILD_DIR)/CMakeCache.txt
	cmake --build $(BUILD_DIR) -j $(JOBS) --target mesd mesctl

# Each completion is written to a temporary name and moved into place only when mesctl
# succeeded and wrote something: a failure stops the install with its reason and leaves
# no empty or partial file behind.
install: install-build
	install -d -m 0755 $(DESTDIR)$(BINDIR) $(DESTDIR)$(SBINDIR) $(DESTDIR)$(DOCDIR) \
	  $(DESTDIR)$(BASHCOMPDIR) $(DESTDIR)$(ZSHCOMPDIR) $(DESTDIR)$(UNITDIR) $(DESTDIR)$(SYSUSERSDIR) \
	  $(DESTDIR)$(TMPFILESDIR) $(DESTDIR)$(SYSCONFDIR)/mesd
	install -m 0755 $(BUILD_DIR)/cmd/mesd $(DESTDIR)$(SBINDIR)/mesd
	install -m 0755 $(BUILD_DIR)/cmd/mesctl $(DESTDIR)$(BINDIR)/mesctl
	@for page in $(MAN_PAGES); do \
	  section=$${page##*.}; \
	  echo "install -D -m 0644 $$page $(DESTDIR)$(MANDIR)/man$$section/$${page##*/}"; \
	  install -D -m 0644 $$page $(DESTDIR)$(MANDIR)/man$$section/$${page##*/} || exit 1; \
	done
	@for shell in bash zsh; do \
	  case $$shell in bash) to=$(DESTDIR)$(BASHCOMPDIR)/mesctl;; zsh) to=$(DESTDIR)$(ZSHCOMPDIR)/_mesctl;; esac; \
	  echo "$(MESCTL) completion $$shell > $$to"; \
	  if $(MESCTL) completion $$shell > $$to.tmp && [ -s $$to.tmp ]; then \
	    chmod 0644 $$to.tmp && mv -f $$to.tmp $$to; \
	  else \
	    rm -f $$to.tmp; \
	    echo "make install: '$(MESCTL) completion $$shell' failed or printed nothing: no $$shell completion; install stopped" >&2; \
	    exit 1; \
	  fi; \
	done
	sed -e 's|@SBINDIR@|$(SBINDIR)|g' -e 's|@SYSCONFDIR@|$(SYSCONFDIR)|g' -e 's|@DOCDIR@|$(DOCDIR)|g' \
	  dist/mesd.service.in > $(DESTDIR)$(UNITDIR)/mesd.service.tmp
	chmod 0644 $(DESTDIR)$(UNITDIR)/mesd.service.tmp && mv -f $(DESTDIR)$(UNITDIR)/mesd.service.tmp $(DESTDIR)$(UNITDIR)/mesd.service
	install -m 0644 dist/sysusers.conf $(DESTDIR)$(SYSUSERSDIR)/mesd.conf
	install -m 0644 dist/tmpfiles.conf $(DESTDIR)$(TMPFILESDIR)/mesd.conf
	install -m 0644 dist/redirect-mode.conf $(DESTDIR)$(DOCDIR)/redirect-mode.conf
	@if [ -e $(DESTDIR)$(SYSCONFDIR)/mesd/mesd.yaml ]; then \
	  echo "$(DESTDIR)$(SYSCONFDIR)/mesd/mesd.yaml exists: kept as it is (the example is dist/mesd.yaml)"; \
	else \
	  echo "install -m 0644 dist/mesd.yaml $(DESTDIR)$(SYSCONFDIR)/mesd/mesd.yaml"; \
	  install -m 0644 dist/mesd.yaml $(DESTDIR)$(SYSCONFDIR)/mesd/mesd.yaml; \
	fi

# Removes what `make install` wrote, except the configuration: as Debian's `apt remove` keeps
# a package's conffiles, /etc/mesd/mesd.yaml stays (edited or not) and is named; the user
# and /var/lib/mesd (the store) stay too.
uninstall:
	rm -f $(DESTDIR)$(SBINDIR)/mesd $(DESTDIR)$(BINDIR)/mesctl \
	  $(DESTDIR)$(BASHCOMPDIR)/mesctl $(DESTDIR)$(ZSHCOMPDIR)/_mesctl \
	  $(DESTDIR)$(UNITDIR)/mesd.service $(DESTDIR)$(SYSUSERSDIR)/mesd.conf $(DESTDIR)$(TMPFILESDIR)/mesd.conf \
	  $(DESTDIR)$(DOCDIR)/redirect-mode.conf
	@for page in $(MAN_PAGES); do \
	  echo "rm -f $(DESTDIR)$(MANDIR)/man$${page##*.}/$${page##*/}"; \
	  rm -f $(DESTDIR)$(MANDIR)/man$${page##*.}/$${page##*/}; \
	done
	@rmdir $(DESTDIR)$(DOCDIR) 2>/dev/null || true
	@if [ -e $(DESTDIR)$(SYSCONFDIR)/mesd/mesd.yaml ]; then \
	  echo "kept $(DESTDIR)$(SYSCONFDIR)/mesd/mesd.yaml (configuration); remove it by hand if no longer wanted"; \
	fi

# Benchmarks print figures and ratios; they are not tests.
bench: bench-store bench-dns bench-proxy bench-tls bench-soak

bench-deps:
	@$(MAKE) --no-print-directory deps PACKAGES="$(BENCH_PACKAGES)"

bench-store: build
	$(BUILD_DIR)/bench/bench_store $(BUILD_DIR)/cmd/mesctl 100000

# The cost of one response-rate-limit check (dns.rateLimit), in-process.
.PHONY: bench-rrl
bench-rrl: build
	$(BUILD_DIR)/bench/bench_rrl

# mesd against Knot and NSD on the same zone (dnsperf, interleaved rounds).
bench-dns: build bench-deps
	bench/dns_bench.sh $(BUILD_DIR)

# mesd's own cost per query by type, fast path against the ldns path (no sockets); then A, TXT
# and PTR through mesd with dnsperf, and what a flood of each type costs A queries beside it.
bench-dns-types: build bench-deps
	$(BUILD_DIR)/bench/bench_responder 100000
	bench/dns_types_bench.sh $(BUILD_DIR)

# Cluster mode on a 3-member etcd on loopback: apply throughput for MES=100000, the time until
# every node serves them, propagation p50/p99 over APPLIES=1000 single applies, node RSS
# against single-node mode.
.PHONY: bench-cluster
bench-cluster: build
	python3 bench/cluster_bench.py $(BUILD_DIR)

# mesd against HAProxy in front of the same nginx and iperf3 (wrk, iperf3, interleaved rounds).
bench-proxy: build bench-deps
	bench/proxy_bench.sh $(BUILD_DIR)

# mesd against HAProxy originating TLS to the same nginx, with and without session resumption
# (wrk in plain HTTP to the proxy, TLS on to nginx, interleaved rounds).
bench-tls: build bench-deps
	bench/tls_bench.sh $(BUILD_DIR)

# bench/16core/ ready to copy to a 16-core machine: mesd, its peers and the load generators
# bundled with their libraries, and the data (see bench/16core/README.md).
.PHONY: bench-16core
bench-16core: build bench-deps
	cd bench/16core && ./bundle.sh $(abspath $(BUILD_DIR))/cmd/mesd $(abspath $(BUILD_DIR))/cmd/mesctl \
	  $$(for p in knotd nsd dnsperf haproxy nginx wrk; do command -v $$p; done) && \
	  gcc -O2 -o bundle/bin/reflector reflector.c && strip bundle/bin/* bundle/lib/*.so* && \
	  ./prep-data.sh $(abspath $(BUILD_DIR))/cmd/mesctl

# A million short connections through mesd: descriptors and memory must come back.
bench-soak: build bench-deps
	bench/proxy_soak.sh $(BUILD_DIR)

clean:
	rm -rf $(BUILD_DIR) $(SANITIZE_DIR) $(TSAN_DIR) $(FUZZ_DIR)
