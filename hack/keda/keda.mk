# KEDA on the local cluster, for the side-by-side benchmark (hack/keda/README.md). Included by
# the root Makefile; not part of `make test`.
QWP_KEDA_DIR := $(dir $(lastword $(MAKEFILE_LIST)))

.PHONY: keda-binaries keda-up keda-down keda-smoke keda-check-private bench-keda

keda-binaries: ## build KEDA's operator and metrics adapter from the Go module proxy (cached)
	$(QWP_KEDA_DIR)build.sh

keda-up: cluster-up ## install KEDA (its own manifests, local images) on the local cluster; smoke check 0->1->0
	$(QWP_KEDA_DIR)up.sh

keda-down: ## remove KEDA from the local cluster
	$(QWP_KEDA_DIR)down.sh

keda-smoke: ## a ScaledObject scales a Deployment 0 -> 1 -> 0 on a LocalStack queue
	$(QWP_KEDA_DIR)smoke.sh

keda-check-private: localstack-up ## KEDA's scaling path through the aggregation layer on a private control plane (no shared cluster)
	$(QWP_KEDA_DIR)check-private.sh

bench-keda: localstack-up keda-up e2e-images ## qwp vs real KEDA on the same cluster and traces (docs/benchmarks.md)
	tests/e2e/bench-keda.sh
