# Warden. Every target installs what it is missing first (scripts/bootstrap.sh).
#   make demo    start the gateway, walk through what it does, stop (exit 0 = all as shown)
#   make test    every test: unit (native and wasm), clippy, Envoy config validation, end to end
#   make run     the whole gateway on loopback, in the foreground; Ctrl-C stops it
#   make build   dist/warden-filter.wasm and target/release/{warden,warden-stand-in-provider}
#   make bench   what the filter costs against bare Envoy, in BENCHMARKS.md

SHELL := /bin/bash
PY := .venv/bin/python

.PHONY: all bootstrap build run demo test test-unit test-wasm lint validate-envoy test-e2e bench clean

all: build

bootstrap:
	@scripts/bootstrap.sh

build: bootstrap
	@scripts/build.sh

run: build
	@$(PY) tests/harness/run.py

demo: build
	@$(PY) tests/demo.py

test: build
	@scripts/test.sh

bench: build
	@$(PY) tests/bench/bench.py

# The pieces of `make test`, for a quicker loop (they assume `make build` ran).
test-unit:
	@scripts/test.sh unit
test-wasm:
	@scripts/test.sh wasm
lint:
	@scripts/test.sh lint
validate-envoy:
	@scripts/test.sh validate
test-e2e:
	@scripts/test.sh e2e

clean:
	cargo clean
	rm -rf dist .warden
