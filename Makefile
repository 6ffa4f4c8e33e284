# oxloop — every target sets up .venv when it is missing, so a fresh clone needs only `make demo` / `make test`.
.DEFAULT_GOAL := help
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.deps-stamp
export VIRTUAL_ENV := $(abspath $(VENV))
export PATH := $(abspath $(VENV))/bin:$(PATH)

$(STAMP): requirements-dev.txt requirements-test.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $(STAMP)

.PHONY: venv
venv: $(STAMP) ## create .venv with the build, test, lint and bench dependencies

# The load generator (crates/oxloop-loadgen, built by cargo test/clippy --workspace and by
# the benchmarks) links the system's OpenSSL through the openssl crate: its headers and
# pkg-config must be there. A no-op when they are.
.PHONY: sys-deps
sys-deps: ## Debian packages the Rust workspace builds against (libssl-dev, pkg-config), installed when missing
	@pkg-config --exists openssl 2>/dev/null || { \
		echo "installing libssl-dev and pkg-config (the load generator links the system's OpenSSL)"; \
		command -v apt-get >/dev/null 2>&1 && apt-get update -qq && \
			apt-get install -y -qq libssl-dev pkg-config >/dev/null; } || { \
		echo "libssl-dev and pkg-config are missing and could not be installed (apt-get install libssl-dev pkg-config)"; \
		exit 1; }

# The integration tests (tests/integration/test_postgres.py, test_redis.py) start real
# servers from Debian's packages: postgresql (initdb and postgres, in
# /usr/lib/postgresql/<major>/bin; the tests run them as the postgres user the package
# creates when they run as root) and redis-server (bookworm's is built with TLS, which the
# tests use). Neither package's own service is used; a no-op when both are there.
.PHONY: test-servers-deps
test-servers-deps: ## Debian packages the integration tests run as servers (postgresql, redis-server), installed when missing
	@{ command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; } && \
		command -v redis-server >/dev/null 2>&1 || { \
		echo "installing postgresql and redis-server (the integration tests start them)"; \
		command -v apt-get >/dev/null 2>&1 && apt-get update -qq && \
			apt-get install -y -qq postgresql redis-server >/dev/null; } || { \
		echo "postgresql and redis-server are missing and could not be installed (apt-get install postgresql redis-server)"; \
		exit 1; }

.PHONY: build-dev
build-dev: $(STAMP) ## build the extension in debug mode into .venv
	maturin develop -q

.PHONY: build-prod
build-prod: $(STAMP) ## build the extension in release mode into .venv
	maturin develop -q --release

.PHONY: format
format: $(STAMP) ## format Rust and Python sources
	cargo fmt --all
	ruff format python tests benches tools examples
	ruff check --fix python tests benches tools examples

.PHONY: lint-rust
lint-rust: $(STAMP) sys-deps ## cargo fmt --check and clippy -D warnings
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

.PHONY: lint-python
lint-python: $(STAMP) ## ruff, and stubtest for the .pyi stubs (needs the built extension)
	ruff check python tests benches tools examples
	ruff format --check python tests benches tools examples
	$(PY) -m mypy.stubtest oxloop._oxloop --allowlist .mypy-stubtest-allowlist

.PHONY: lint
lint: lint-rust lint-python ## all linters

.PHONY: test-rust
test-rust: $(STAMP) sys-deps ## cargo test for the Python-free core and the load generator
	cargo test --workspace

.PHONY: test-python
test-python: build-prod test-servers-deps ## pytest in .venv only (quick): behaviour tests on oxloop and asyncio, then CPython's conformance suite
	$(PY) -m pytest tests -q -p no:cacheprovider --ignore=tests/cpython
	$(PY) -m pytest tests/cpython -q -p no:cacheprovider

.PHONY: test-matrix
test-matrix: $(STAMP) test-servers-deps ## both pytest suites on every CPython >= 3.11 found, each built with `pip install .`
	$(PY) tools/matrix.py

.PHONY: test
test: test-rust build-prod lint test-matrix ## everything CI runs: Rust tests, linters, pytest on every CPython

.PHONY: tools
tools: ## Debian tools the benchmarks use (wrk, valgrind), installed when missing
	@command -v wrk >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 && \
		(apt-get update -qq && apt-get install -y -qq wrk >/dev/null) || \
		echo "wrk could not be installed: the HTTP benchmark will be skipped"; }
	@command -v valgrind >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 && \
		(apt-get update -qq && apt-get install -y -qq valgrind >/dev/null) || \
		echo "valgrind could not be installed: bench-instructions will not run"; }

.PHONY: bench
bench: build-prod tools sys-deps ## the side-by-side suites: micro (loop primitives) and net (servers under load), then their charts
	$(PY) benches/micro.py
	$(PY) benches/net.py
	$(PY) benches/memory.py
	$(PY) benches/chart.py

.PHONY: bench-instructions
bench-instructions: build-prod tools sys-deps ## instructions per request of each network server under callgrind, loop by loop
	$(PY) benches/micro_instructions.py
	$(PY) benches/instructions.py

.PHONY: demo
demo: build-prod tools sys-deps ## the main job: servers under load on oxloop, uvloop and the stdlib loop, side by side
	$(PY) benches/net.py --quick

.PHONY: clean
clean: ## remove build artefacts
	cargo clean
	rm -rf $(VENV) .venvs python/oxloop/*.so

.PHONY: help
help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'
