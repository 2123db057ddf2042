# Warden. Every target installs what it is missing first (scripts/bootstrap.sh).
#   make demo    start the gateway, walk through what it does, stop (exit 0 = all as shown)
#   make test    every test: unit (native and wasm), clippy, Envoy config validation,
#                the built filter in an emulated proxy-wasm host, end to end
#   make run     the whole gateway on loopback, in the foreground; Ctrl-C stops it
#   make build   dist/warden-filter.wasm and target/local/{warden,warden-stand-in-provider}
#   make bench   what the filter costs against bare Envoy, in BENCHMARKS.md
#   make detect-report  each detector's recall and false alarms on a labelled corpus
#   make fuzz    the engine's fuzz targets (cargo-fuzz, libFuzzer), FUZZ_SECONDS each
#                (default 30; scripts/fuzz.sh says the rest); not part of `make test`
#   make soak    ten minutes of mixed traffic with 1,000 open streams while the control
#                plane and IdP restart; figures in target/soak (RELIABILITY.md quotes them)
#   make fresh-check  the README's two commands on a pristine Debian 12 root
#                (scripts/fresh-check.sh; too long for CI: run it before
#                changing how anything is installed, built or tested)
# `make demo` and `make run` install only what they use; `make test`,
# `make bench`, `make fuzz` and `make soak` add what only they need.

SHELL := /bin/bash
PY := .venv/bin/python

.PHONY: all bootstrap bootstrap-test bootstrap-bench bootstrap-fuzz build run demo test fresh-check test-unit test-wasm test-emulated lint validate-envoy test-e2e bench detect-report fuzz soak clean

all: build

bootstrap:
	@scripts/bootstrap.sh demo
bootstrap-test:
	@scripts/bootstrap.sh test
bootstrap-bench:
	@scripts/bootstrap.sh bench
bootstrap-fuzz:
	@scripts/bootstrap.sh fuzz

build: bootstrap
	@scripts/build.sh

run: build
	@$(PY) tests/harness/run.py

demo: build
	@$(PY) tests/demo.py

test: bootstrap-test
	@scripts/build.sh
	@scripts/test.sh

bench: bootstrap-bench
	@WARDEN_NATIVE_PROFILE=release WARDEN_WASM_PROFILE=wasm-release scripts/build.sh
	@WARDEN_NATIVE_PROFILE=release WARDEN_WASM_PROFILE=wasm-release $(PY) tests/bench/bench.py $(BENCH_ARGS)

fresh-check:
	@scripts/fresh-check.sh

detect-report: bootstrap
	@scripts/test.sh detect

fuzz: bootstrap-fuzz
	@scripts/fuzz.sh $(FUZZ_TARGETS)

# Release binaries, as a deployment runs them; SOAK_SECONDS, SOAK_STREAMS and
# SOAK_CHAT_WORKERS change the defaults (600, 1000, 6).
soak: bootstrap-test
	@WARDEN_NATIVE_PROFILE=release scripts/build.sh
	@WARDEN_NATIVE_PROFILE=release $(PY) tests/soak/soak.py

# The pieces of `make test`, for a quicker loop (they assume `make build` ran).
test-unit:
	@scripts/test.sh unit
test-wasm:
	@scripts/test.sh wasm
test-emulated:
	@scripts/test.sh emulated
lint:
	@scripts/test.sh lint
validate-envoy:
	@scripts/test.sh validate
test-e2e:
	@scripts/test.sh e2e

clean:
	cargo clean
	rm -rf dist .warden .tools
