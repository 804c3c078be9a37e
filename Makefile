# Each target is one cargo command (or close to it); .ci/run calls `make lint` and `make test`.
CARGO ?= cargo
MUSL_TARGET := x86_64-unknown-linux-musl

.PHONY: build run test lint static bench soak doc clean

build:
	$(CARGO) build --release

# Serve the example config on 127.0.0.1:11435 against a local Ollama on 127.0.0.1:11434.
# config.toml and keys.txt are created from the examples when missing (and never overwritten).
run:
	@test -f config.toml || cp config.example.toml config.toml
	@test -f keys.txt || cp keys.example.txt keys.txt
	$(CARGO) run --release -- serve --config config.toml

# The gateway's tests, then the vendored tiny_http's own (not a workspace member).
test:
	$(CARGO) test
	$(CARGO) test -p tiny_http

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

doc:
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --no-deps

# A fully static binary (needs `rustup target add x86_64-unknown-linux-musl` and a musl C
# compiler for ring: Debian/Ubuntu `apt-get install musl-tools`).
static:
	CC_x86_64_unknown_linux_musl=musl-gcc $(CARGO) build --release --target $(MUSL_TARGET)
	@ls -l target/$(MUSL_TARGET)/release/ollama-gateway
	@file target/$(MUSL_TARGET)/release/ollama-gateway 2>/dev/null || true

# Direct-to-upstream vs through-the-gateway, side by side (see README "Performance"), for
# the release binary and the static one, which is built first (as `make static` does) and
# handed to the bench by path.
TARGET_DIR := $(abspath $(or $(CARGO_TARGET_DIR),target))
# The static build is measured too when it builds (see `static`); without the musl target
# the bench says so and measures the glibc build only.
bench:
	-CC_x86_64_unknown_linux_musl=musl-gcc $(CARGO) build --release --target $(MUSL_TARGET)
	BENCH_STATIC_BINARY=$(TARGET_DIR)/$(MUSL_TARGET)/release/ollama-gateway $(CARGO) bench --bench gateway

# Ten minutes of mixed traffic with faults, disconnects, slow clients, bursts and reloads
# against the release binary; fails unless RSS, threads and descriptors end where they
# started. Not part of `make test`. Shorter: `SOAK_SECS=60 make soak`.
soak:
	$(CARGO) bench --bench soak

clean:
	$(CARGO) clean
