# mesd — a thin wrapper over CMake. `make` builds, `make test` installs what is missing,
# builds and runs every test; `make run` starts mesd on conf/examples/.
BUILD_DIR      ?= build
SANITIZE_DIR   ?= build-sanitize
BUILD_TYPE     ?= RelWithDebInfo
JOBS           ?= $(shell nproc)
CMAKE_FLAGS    ?=

# Debian packages: to build, and what the tests drive as real clients and peers.
BUILD_PACKAGES := build-essential cmake pkg-config libldns-dev libuv1-dev libyaml-cpp-dev \
                  libssl-dev liblmdb-dev catch2
TEST_PACKAGES  := openssl dnsutils knot-dnsutils ldnsutils dnsmasq-base iproute2
PACKAGES       := $(BUILD_PACKAGES) $(TEST_PACKAGES)

.PHONY: all build deps test test-sanitize sanitize run clean bench bench-store

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

test: build
	ctest --test-dir $(BUILD_DIR) --output-on-failure -j $(JOBS)

$(SANITIZE_DIR)/CMakeCache.txt:
	cmake -S . -B $(SANITIZE_DIR) -DCMAKE_BUILD_TYPE=Debug -DMESD_SANITIZE=ON $(CMAKE_FLAGS)

sanitize: deps $(SANITIZE_DIR)/CMakeCache.txt
	cmake --build $(SANITIZE_DIR) -j $(JOBS)

# The same tests under AddressSanitizer and UndefinedBehaviorSanitizer.
test-sanitize: sanitize
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	  ctest --test-dir $(SANITIZE_DIR) --output-on-failure -j $(JOBS)

# Starts mesd in the foreground on conf/examples/ (applied into .data/store); Ctrl-C stops it.
run: build
	@echo "mesd: serving conf/examples/ on 127.0.0.1:15053 (admin on 127.0.0.1:9901). Try:"
	@echo "  dig @127.0.0.1 -p 15053 mes-http.mesh"
	@echo "  dig @127.0.0.1 -p 15053 mes-http.mesh TXT +short"
	@echo "  dig @127.0.0.1 -p 15053 -x 127.242.0.3"
	@echo "  curl -s 127.0.0.1:9901/config"
	@echo "  $(BUILD_DIR)/cmd/mesctl --config conf/mesd-run.yaml get mes"
	$(BUILD_DIR)/cmd/mesd --config conf/mesd-run.yaml --conf-dir conf/examples

# Benchmarks print figures and ratios; they are not tests.
bench: bench-store

bench-store: build
	$(BUILD_DIR)/bench/bench_store $(BUILD_DIR)/cmd/mesctl 100000

clean:
	rm -rf $(BUILD_DIR) $(SANITIZE_DIR)
