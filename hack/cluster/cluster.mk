# Single-node Kubernetes without Docker (hack/cluster/README.md). Included by the root Makefile.
QWP_CLUSTER_DIR := $(dir $(lastword $(MAKEFILE_LIST)))

.PHONY: cluster-up cluster-down cluster-status cluster-smoke cluster-binaries cluster-helm images images-load

cluster-binaries: ## build k8s/etcd/helm binaries into .cache/cluster/<version>/bin (once)
	$(QWP_CLUSTER_DIR)build-binaries.sh

cluster-helm: ## build only helm into .cache/cluster/<version>/bin (the chart checks of `make unit`)
	$(QWP_CLUSTER_DIR)build-binaries.sh helm

cluster-up: ## start etcd, control plane, containerd, kubelet, kube-proxy; prints the kubeconfig path
	$(QWP_CLUSTER_DIR)up.sh

cluster-down: ## stop everything cluster-up started, remove mounts, rules and state
	$(QWP_CLUSTER_DIR)down.sh

cluster-status: ## show the cluster processes (by PID), node and pods
	$(QWP_CLUSTER_DIR)status.sh

images: ## OCI image archives (pause, qwp-testbox, qwp-* from target/release) in .cache/cluster/images
	$(QWP_CLUSTER_DIR)images.sh build

images-load: images ## import the image archives into the cluster's containerd (k8s.io namespace)
	$(QWP_CLUSTER_DIR)images.sh load

cluster-smoke: ## check node Ready, pod logs, Deployment 0->3->0, SIGTERM grace period
	$(QWP_CLUSTER_DIR)smoke.sh
