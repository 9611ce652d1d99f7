# aigw: build, run and test. Every target installs what it needs itself (wasm targets, cargo-component).

CARGO            ?= cargo
# Pinned: installing takes ~13 minutes, so it happens once per machine, only when missing.
CARGO_COMPONENT_VERSION := 0.21.1

PLUGINS          := openai-compatible ollama anthropic azure-openai mistral bedrock
PLUGIN_DIR       := target/plugins
GUEST_DIR        := target/test-guests
WASM_TARGET      := wasm32-wasip2
GUEST_PROFILE    := guest

.PHONY: image image-test restart-test k8s-check fuzz all build run test parity clients bench soak lint fmt plugins test-guests component-artifacts toolchain cargo-component clean

all: build

## toolchain: the Wasm targets the plugins build for (no-op when present).
toolchain:
	@rustup target list --installed | grep -qx $(WASM_TARGET) || rustup target add $(WASM_TARGET)
	@rustup target list --installed | grep -qx wasm32-wasip1 || rustup target add wasm32-wasip1

## cargo-component: installed once, pinned; skipped when the right version is already there.
cargo-component:
	@if ! cargo component --version 2>/dev/null | grep -qE " $(CARGO_COMPONENT_VERSION)$$"; then \
		echo "installing cargo-component $(CARGO_COMPONENT_VERSION) (one time, ~13 minutes)"; \
		$(CARGO) install cargo-component --version $(CARGO_COMPONENT_VERSION) --locked; \
	fi

## plugins: provider components into target/plugins/ (the default plugins directory).
plugins: toolchain
	$(CARGO) build --target $(WASM_TARGET) --profile $(GUEST_PROFILE) $(addprefix -p ,$(PLUGINS))
	@mkdir -p $(PLUGIN_DIR)
	@for p in $(PLUGINS); do cp target/$(WASM_TARGET)/$(GUEST_PROFILE)/$$(echo $$p | tr - _).wasm $(PLUGIN_DIR)/$$p.wasm; done

## test-guests: purpose-built misbehaving components for the sandbox tests (and some built
## against older WIT versions: one refused, two still served).
test-guests: toolchain
	@mkdir -p $(GUEST_DIR)
	$(CARGO) build --target $(WASM_TARGET) --profile $(GUEST_PROFILE) -p hostile-guest --features v2
	@cp target/$(WASM_TARGET)/$(GUEST_PROFILE)/hostile_guest.wasm $(GUEST_DIR)/hostile-v2.wasm
	$(CARGO) build --target $(WASM_TARGET) --profile $(GUEST_PROFILE) -p previous-guest --features v3
	@cp target/$(WASM_TARGET)/$(GUEST_PROFILE)/previous_guest.wasm $(GUEST_DIR)/previous-v3.wasm
	$(CARGO) build --target $(WASM_TARGET) --profile $(GUEST_PROFILE) -p hostile-guest -p networked-guest -p stale-guest -p previous-guest
	@cp target/$(WASM_TARGET)/$(GUEST_PROFILE)/hostile_guest.wasm $(GUEST_DIR)/hostile.wasm
	@cp target/$(WASM_TARGET)/$(GUEST_PROFILE)/networked_guest.wasm $(GUEST_DIR)/networked.wasm
	@cp target/$(WASM_TARGET)/$(GUEST_PROFILE)/stale_guest.wasm $(GUEST_DIR)/stale.wasm
	@cp target/$(WASM_TARGET)/$(GUEST_PROFILE)/previous_guest.wasm $(GUEST_DIR)/previous.wasm

## component-artifacts: the openai-compatible plugin built by cargo-component too, to prove both
## toolchains give components that behave the same.
component-artifacts: toolchain cargo-component
	$(CARGO) component build --release -p openai-compatible
	@mkdir -p $(GUEST_DIR)
	@cp target/wasm32-wasip1/release/openai_compatible.wasm $(GUEST_DIR)/openai-compatible.cargo-component.wasm

## build: target/release/aigw, the mock model server, and the plugins.
build: plugins
	$(CARGO) build --release -p aigw -p aigw-mock -p aigw-bench

## run: start the gateway in development mode on its embedded defaults (port 5052).
run: build
	./target/release/aigw serve --dev

## test: the whole suite.
test: build test-guests component-artifacts
	$(CARGO) test --release --workspace

## parity: replay GitLab's recorded transcripts (AIGW_GITLAB_REFERENCE, default ../shared/reference)
## and compare aigw's answers with GitLab's gateway's; report in target/parity/report.txt.
parity: build
	$(CARGO) run --release -p aigw-tests --bin parity

## clients: the official openai SDK and LiteLLM (pinned, from PyPI, in target/clients-venv)
## drive the model API against every provider format the mock speaks.
clients: build
	$(CARGO) run --release -p aigw-tests --bin clients-test

## bench: aigw's own measurements (not part of `make test`); results also in target/bench/*.json.
bench: build
	$(CARGO) build --release -p aigw-bench
	./target/release/aigw-bench plugin
	./target/release/aigw-bench gateway
	./target/release/aigw-bench model-api
	./target/release/aigw-bench fleet
	$(CARGO) bench -p aigw-bench --bench micro

## soak: 30 minutes (SOAK_MINUTES) of mixed traffic with a plugin swap and a prompt reload every
## minute; not in CI. Results in target/bench/soak.json.
SOAK_MINUTES ?= 30
soak: build
	$(CARGO) build --release -p aigw-bench
	./target/release/aigw-bench soak --minutes $(SOAK_MINUTES)

## image: the OCI image localhost/aigw:latest (podman; FROM scratch around a static musl build),
## its context staged in target/image. image-test: start it against the mock GitLab and model
## server on the host and check what an operator relies on (target/image/report.json).
MUSL_TARGET := x86_64-unknown-linux-musl
IMAGE ?= localhost/aigw:latest
# The workspace version, which deploy/kubernetes's image tag names too.
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
# What the image targets need beyond rustup: musl-gcc for the static build's C parts, podman and
# runc (crun fails on these machines' hybrid cgroups) to build and run the image.
IMAGE_DEPS := podman=podman runc=runc musl-gcc=musl-tools
image: plugins
	./tools/debian-deps.sh $(IMAGE_DEPS)
	rustup target add $(MUSL_TARGET)
	CARGO_PROFILE_RELEASE_STRIP=symbols $(CARGO) build --release --target $(MUSL_TARGET) -p aigw
	rm -rf target/image && mkdir -p target/image/plugins
	cp target/$(MUSL_TARGET)/release/aigw target/image/aigw
	cp target/plugins/*.wasm target/image/plugins/
	cp /etc/ssl/certs/ca-certificates.crt target/image/ca-certificates.crt
	podman build --quiet --tag $(IMAGE) --tag localhost/aigw:$(VERSION) --file deploy/container/Containerfile target/image

image-test: image
	$(CARGO) build --release -p aigw-tests --bin image-test
	./target/release/image-test $(IMAGE)

## restart-test: a rolling restart of two replicas behind nginx (Debian's nginx-light) under a
## bounded load: every request must succeed (target/restart/report.json).
restart-test: build
	./tools/debian-deps.sh nginx=nginx-light
	$(CARGO) build --release -p aigw-tests --bin restart-test
	./target/release/restart-test

## k8s-check: every manifest in deploy/kubernetes loaded strictly through the Kubernetes
## client's models (tools/k8s_strict.py), then scanned by checkov; both from PyPI, pinned in
## tools/k8s-requirements.txt, installed once into target/k8s-venv.
K8S_VENV := target/k8s-venv
k8s-check:
	@test -x $(K8S_VENV)/bin/checkov || { python3 -m venv $(K8S_VENV) && \
		$(K8S_VENV)/bin/pip install --quiet --requirement tools/k8s-requirements.txt; }
	$(K8S_VENV)/bin/python tools/k8s_strict.py deploy/kubernetes
	$(K8S_VENV)/bin/python tools/k8s_strict.py deploy/kubernetes/components/duo-workflow-service
	$(K8S_VENV)/bin/checkov --directory deploy/kubernetes --framework kubernetes --skip-download --compact --quiet

## fuzz: every cargo-fuzz target for FUZZ_SECONDS (default 600) each, FUZZ_PARALLEL at a time;
## needs the nightly toolchain; not in CI. Seeds in fuzz/seeds, crashes in fuzz/artifacts.
fuzz:
	./tools/fuzz.sh

## lint: formatting, clippy with warnings denied, and no import cycle between the host's
## top-level modules.
lint:
	$(CARGO) fmt --all -- --check
	python3 tools/module_cycles.py host/src
	$(CARGO) clippy --release --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
