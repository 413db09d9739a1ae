# Two commands on a fresh machine: `make demo` serves examples/flask on
# http://127.0.0.1:8000, `make test` runs every test (what CI runs).
CARGO ?= cargo
BIN := target/release/rsgi-wasm
LISTEN ?= 127.0.0.1:8000

.PHONY: demo test lint bin bench bench-noisy bench-protocols bench-distinct bench-compact bench-frameworks profile audit
.DELETE_ON_ERROR:

demo: bin
	$(MAKE) target/examples/flask.wasm
	@echo "serving examples/flask; try: curl http://$(LISTEN)/  (Ctrl-C stops)"
	$(BIN) run target/examples/flask.wasm --listen $(LISTEN)

bin:
	$(CARGO) build --release

target/examples/flask.wasm: $(BIN) $(wildcard examples/flask/*.py examples/flask/templates/*) examples/flask/requirements.txt
	./scripts/setup.sh
	$(BIN) build app:app -p examples/flask -r examples/flask/requirements.txt -o $@

test:
	./scripts/setup.sh
	python3 scripts/validate-manifests.py
	python3 -m unittest discover -s guest/tests -t guest
	$(CARGO) test --release

lint:
	$(CARGO) fmt --all --check
	python3 scripts/check-modules.py
	$(CARGO) clippy --release --all-targets -- -D warnings

# Side-by-side benchmark (installs wrk, granian, gunicorn itself); writes
# its table into docs/benchmarks.md. Takes about 45 minutes in all.
bench: bin
	./scripts/setup.sh
	python3 bench/bench.py $(BENCH_ARGS)
	python3 bench/noisy.py
	python3 bench/protocols.py
	python3 bench/distinct.py $(DISTINCT_ARGS)
	python3 bench/compact.py

# Noisy neighbour: a healthy tenant's throughput while another spins or
# allocates in the same process (about 2 minutes; part of `make bench`).
bench-noisy: bin
	./scripts/setup.sh
	python3 bench/noisy.py $(NOISY_ARGS)

# Hello over HTTP/1.1, HTTP/2 and TLS, next to Granian (about 3 minutes;
# part of `make bench`).
bench-protocols: bin
	./scripts/setup.sh
	python3 bench/protocols.py

# Many distinct apps in one process (issue 15): compile, disk, memory and
# cold starts per additional app (1,000 hello variants: about 15 minutes
# and 45 GB of disk under target/bench/distinct, fewer on a smaller disk;
# part of `make bench`).
bench-distinct: bin
	./scripts/setup.sh
	python3 bench/distinct.py $(DISTINCT_ARGS)

# `--compact-cache` next to the default cache: disk per additional app,
# its first start, cold loads and memory (about 5 minutes; part of
# `make bench`).
bench-compact: bin
	./scripts/setup.sh
	python3 bench/compact.py

# Cargo.lock against the RustSec advisory database, where it is reachable.
audit:
	./scripts/audit.sh

# Each example under rsgi-wasm and gunicorn: first request and steady-state
# latency (installs gunicorn and the examples' requirements itself).
bench-frameworks: bin
	./scripts/setup.sh
	python3 bench/frameworks.py

# Instructions per request under callgrind (guest / host / libc split, top
# functions): comparable between two builds on a noisy machine, unlike
# req/s. `make profile PROFILE_ARGS="--app flask-hello"`.
profile: bin
	./scripts/setup.sh
	python3 bench/instructions.py $(PROFILE_ARGS)
