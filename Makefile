# dphost: `make run` shows the product working on a local TAP simulator;
# `make test` runs every test. Both set up what they need themselves.

CARGO       ?= cargo
WASM_TARGET := wasm32-wasip2
COMPONENTS  := components
RELEASE     := target/release
WASM_OUT    := target/$(WASM_TARGET)/release

.PHONY: all setup build run test lint fmt bench clean fuzz soak

all: build

## setup: add the wasm32-wasip2 target and check the toolchain
setup:
	@command -v $(CARGO) >/dev/null || { echo "cargo not found: install Rust 1.95 with rustup"; exit 1; }
	@if command -v rustup >/dev/null; then \
	  rustup target list --installed | grep -qx $(WASM_TARGET) || rustup target add $(WASM_TARGET); \
	else echo "rustup not found: make sure the $(WASM_TARGET) target is installed"; fi
	@$(CARGO) --version

## build: target/release/{dphost,tap-sim} and components/proofpoint_tap.wasm
build: setup
	$(CARGO) build --release -p dphost -p tap-sim
	$(CARGO) build --release --target $(WASM_TARGET) -p proofpoint-tap -p sandbox-probe
	@mkdir -p $(COMPONENTS)
	cp $(WASM_OUT)/proofpoint_tap.wasm $(COMPONENTS)/proofpoint_tap.wasm
	@ls -l $(RELEASE)/dphost $(RELEASE)/tap-sim $(COMPONENTS)/proofpoint_tap.wasm

## run: the host with a local TAP simulator tenant (no credentials needed)
run: build
	./scripts/demo.sh

## test: unit tests (host, guest natively, simulator) and end-to-end tests,
## then the suites that exercise storage again on a throwaway PostgreSQL
## (tests/postgres/postgres.sh installs and starts it; `multihost` and
## `backends` use it in the first pass already)
PG_SUITES := --test pipeline --test collection --test crash --test cli --test ops --test forward
test: build
	$(CARGO) test --release --workspace
	DPHOST_TEST_STORE=postgres $(CARGO) test --release -p e2e $(PG_SUITES)

## fuzz: fuzz the TAP response parser and normaliser (cargo-fuzz, libFuzzer),
## FUZZ_SECS per target, seeded from the hand-made corpus; findings in fuzz/artifacts
FUZZ_SECS ?= 60
fuzz:
	@command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	FUZZ_SEED_DIR=$(CURDIR)/fuzz/corpus $(CARGO) test --release -p proofpoint-tap --lib harness::tests::seeds -- --nocapture
	cd fuzz && for t in siem_body siem_event; do \
	  RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run $$t -- -max_total_time=$(FUZZ_SECS) -rss_limit_mb=4096 || exit 1; \
	done

## soak: the crash-consistency test with SOAK_KILLS SIGKILLs (make test: 50)
SOAK_KILLS ?= 500
soak: build
	DPHOST_SOAK_KILLS=$(SOAK_KILLS) $(CARGO) test --release -p e2e --test crash -- --nocapture

## lint: formatting and clippy, native and wasm; the fuzz targets still build
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --release --workspace --all-targets -- -D warnings
	$(CARGO) clippy --release --target $(WASM_TARGET) -p proofpoint-tap -p sandbox-probe -- -D warnings
	$(CARGO) clippy --release --target $(WASM_TARGET) -p bench-pipeline --target-dir target/bench-wasm -- -D warnings
	RUSTC_BOOTSTRAP=1 $(CARGO) check --manifest-path fuzz/Cargo.toml

## bench: every benchmark (instantiation, sandbox overhead, end to end, density),
## then one table of figures (also in target/bench-results.md). See BENCHMARKS.md;
## BENCH_DENSITY_MINUTES (default 10) sets the 1,000-tenant run's length.
bench: build
	$(CARGO) build --release -p dphost-bench
	$(CARGO) build --release --target $(WASM_TARGET) -p bench-pipeline --target-dir target/bench-wasm
	./target/release/dphost-bench all | tee target/bench-results.md

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
	rm -rf $(COMPONENTS)/*.wasm demo
