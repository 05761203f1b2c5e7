# pullback — top-level tasks. `make demo` and `make test` work on a fresh Debian 12
# machine with the Rust toolchain: `deps` installs the rest.

CARGO ?= cargo
BENCH_DIR ?= /var/tmp/pullback-bench
# protobuf-compiler: the build of the etcd client (crates/pbs, `[coordinator] etcd`).
APT_PACKAGES := gcc make pkg-config rsync zstd time curl bc python3 procps postgresql-client postgresql mariadb-server mariadb-client protobuf-compiler
# Only the tests need these (the browser test, tests/tests/chromium.rs; etcd for
# tests/tests/etcd.rs): not `make demo`.
TEST_APT_PACKAGES := chromium chromium-driver etcd-server

.PHONY: all deps test-deps garage-dep apt build test lint unit e2e demo bench fmt clean fuzz fuzz-deps fuzz-seeds

all: build

# System packages the build and demo need (apt-get update first); `test-deps` adds the
# browser for the browser test.
deps:
	@command -v $(CARGO) >/dev/null || { echo "cargo not found: install the Rust toolchain (rustup) first"; exit 1; }
	@$(MAKE) --no-print-directory apt PACKAGES="$(APT_PACKAGES)"
	@$(CARGO) nextest --version >/dev/null 2>&1 || $(CARGO) install --locked cargo-nextest

test-deps: deps garage-dep
	@$(MAKE) --no-print-directory apt PACKAGES="$(TEST_APT_PACKAGES)"

# The S3 server that the object-store tests and `make bench` start (Garage): built once
# into ~/.cargo/bin by cargo (about 8 minutes on 2 cores), then reused.
GARAGE_VERSION ?= 2.5.0
garage-dep:
	@command -v garage >/dev/null 2>&1 || [ -x "$(HOME)/.cargo/bin/garage" ] || \
	  $(CARGO) install garage --locked --version $(GARAGE_VERSION)

apt:
	@missing=""; for p in $(PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q $$missing; \
	fi

build: deps
	$(CARGO) build --workspace

# One profile (dev, dependencies optimised) shared by the build, the unit tests
# and the end-to-end tests, which run the binaries built here.
test: test-deps lint
	$(CARGO) build --workspace --all-targets
	$(CARGO) nextest run --workspace --no-fail-fast

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

demo: build
	bash deploy/demo.sh

bench: deps garage-dep
	bash bench/bench.sh "$(BENCH_DIR)"
	bash bench/pipeline.sh "$(BENCH_DIR)"
	bash bench/fanout.sh "$(BENCH_DIR)"

# Fuzz the parsers of what peers send (fuzz/README.md): each target FUZZ_SECS seconds.
# Not part of `test` or CI. cargo-fuzz needs nightly features: RUSTC_BOOTSTRAP=1 lets the
# stable toolchain build it. Per-target logs (executions, findings) go to fuzz/logs/.
FUZZ_SECS ?= 60
FUZZ_TARGETS ?= gen_record manifest pack wire_json
FUZZ_SANITIZER ?= address
FUZZ_FLAGS ?= -rss_limit_mb=1024 -malloc_limit_mb=128 -timeout=10

fuzz-deps:
	@$(CARGO) fuzz --version >/dev/null 2>&1 || $(CARGO) install --locked cargo-fuzz

fuzz-seeds:
	$(CARGO) run --quiet --manifest-path fuzz/Cargo.toml -p pullback-fuzz-seeds -- fuzz/corpus

fuzz: fuzz-deps fuzz-seeds
	@mkdir -p fuzz/logs
	@for t in $(FUZZ_TARGETS); do \
	  echo "== fuzz $$t for $(FUZZ_SECS) s"; \
	  RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run --sanitizer $(FUZZ_SANITIZER) $$t -- \
	    -max_total_time=$(FUZZ_SECS) $(FUZZ_FLAGS) > fuzz/logs/$$t.log 2>&1; rc=$$?; \
	  grep -E '^Done [0-9]+ runs|^#[0-9]+.*(DONE|pulse)' fuzz/logs/$$t.log | tail -1; \
	  if [ $$rc -ne 0 ]; then echo "fuzz $$t: FOUND A CRASH (fuzz/logs/$$t.log, fuzz/artifacts/$$t/)"; exit 1; fi; \
	done

clean:
	$(CARGO) clean
