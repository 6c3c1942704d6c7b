#!/usr/bin/env bash
# check-private.sh — KEDA's scaling path through the aggregation layer, on a private control
# plane, when the shared cluster cannot be touched: its own etcd (:23890), kube-apiserver
# (:6543, hack/cluster's PKI and aggregation flags) and kube-controller-manager (HPA
# controller, :10357); KEDA's operator and adapter as host processes (no kubelet here: the
# Deployments from the kustomize overlay stay at 0 and the adapter's Service points at the
# host). A ScaledObject on a LocalStack queue must take a Deployment 0 -> 1 (KEDA), 1 -> 3 (the
# HPA through external.metrics.k8s.io) and 3 -> 0 (cooldown). Prints "check-private: passed".
# Everything it starts is stopped at exit; state in a temp dir.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
"$KEDA_DIR/build.sh"
T=$(mktemp -d /tmp/qwp-keda-check.XXXX)
pids=()
SQS=${AWS_ENDPOINT_URL:-http://127.0.0.1:4566}
queue=keda-check-${T##*.}
cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do while kill -0 "$p" 2>/dev/null; do sleep 0.2; done; done
  curl -s "$SQS/000000000000/$queue" -d Action=DeleteQueue >/dev/null || true
  rm -rf "$T"
}
trap cleanup EXIT
bg() { local name=$1; shift; "$@" >"$T/$name.log" 2>&1 & pids+=($!); }
fail() { tail -n 20 "$T"/*.log >&2; die "check-private: $*"; }
until_true() { # until_true <what> <seconds> <cmd...>
  local what=$1 secs=$2 i; shift 2
  for ((i = 0; i < secs; i++)); do "$@" >/dev/null 2>&1 && return 0; sleep 1; done
  fail "timed out after ${secs}s waiting for $what"
}

QWP_CLUSTER_STATE=$T QWP_CLUSTER_RUN=$T/run QWP_CLUSTER_CACHE=$T/cache "$CLUSTER_DIR/pki.sh"
P=$T/pki
sed -i 's#https://127.0.0.1:6443#https://127.0.0.1:6543#' "$P"/*.kubeconfig
export KUBECONFIG=$P/admin.kubeconfig PATH="$BIN_DIR:$PATH"
bg etcd etcd --name check --data-dir "$T/etcd" --unsafe-no-fsync \
  --listen-client-urls http://127.0.0.1:23890 --advertise-client-urls http://127.0.0.1:23890 \
  --listen-peer-urls http://127.0.0.1:23900 --initial-advertise-peer-urls http://127.0.0.1:23900 \
  --initial-cluster check=http://127.0.0.1:23900
bg apiserver kube-apiserver --etcd-servers http://127.0.0.1:23890 --advertise-address "$BRIDGE_ADDR" \
  --bind-address 127.0.0.1 --secure-port 6543 --service-cluster-ip-range "$SERVICE_CIDR" \
  --client-ca-file "$P/ca.crt" --tls-cert-file "$P/apiserver.crt" --tls-private-key-file "$P/apiserver.key" \
  --service-account-issuer https://kubernetes.default.svc.cluster.local \
  --service-account-key-file "$P/sa.pub" --service-account-signing-key-file "$P/sa.key" \
  --authorization-mode Node,RBAC --profiling=false \
  --requestheader-client-ca-file "$P/front-proxy-ca.crt" --requestheader-allowed-names front-proxy-client \
  --requestheader-username-headers X-Remote-User --requestheader-group-headers X-Remote-Group \
  --requestheader-extra-headers-prefix X-Remote-Extra- \
  --proxy-client-cert-file "$P/front-proxy-client.crt" --proxy-client-key-file "$P/front-proxy-client.key" \
  --enable-aggregator-routing=true
until_true "the private API server" 90 kubectl get --raw /readyz
bg controller-manager kube-controller-manager --kubeconfig "$P/controller-manager.kubeconfig" \
  --authentication-kubeconfig "$P/controller-manager.kubeconfig" --authorization-kubeconfig "$P/controller-manager.kubeconfig" \
  --bind-address 127.0.0.1 --secure-port 10357 --leader-elect=false --use-service-account-credentials=true \
  --root-ca-file "$P/ca.crt" --service-account-private-key-file "$P/sa.key" \
  --service-cluster-ip-range "$SERVICE_CIDR" --allocate-node-cidrs=false

link_upstream
kubectl apply --server-side -k "$KEDA_DIR/kustomize" >/dev/null
kubectl -n keda scale deploy keda-operator keda-metrics-apiserver --replicas 0 >/dev/null
kubectl -n keda patch svc keda-metrics-apiserver --type json -p '[{"op":"remove","path":"/spec/selector"}]' >/dev/null
kubectl apply -f - >/dev/null <<YAML
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: keda-metrics-apiserver-host, namespace: keda, labels: {kubernetes.io/service-name: keda-metrics-apiserver}}
addressType: IPv4
ports: [{name: https, port: 16443, protocol: TCP}]
endpoints: [{addresses: ["$BRIDGE_ADDR"], conditions: {ready: true}}]
YAML
mkdir -p "$T/certs"
operator() { # run in the background by bg: exec makes the recorded PID the operator's own
  cd "$T"
  KEDA_CLUSTER_OBJECT_NAMESPACE=keda POD_NAMESPACE=keda WATCH_NAMESPACE='' exec "$KEDA_BIN_DIR/keda" \
    --leader-elect=false --enable-cert-rotation=true --cert-dir "$T/certs" --enable-webhook-patching=false \
    --metrics-bind-address 127.0.0.1:18080 --health-probe-bind-address 127.0.0.1:18081 \
    --metrics-service-bind-address 127.0.0.1:19666
}
# KEDA's cert manager writes Secret kedaorg-certs and exits so that the pod restarts with it
# mounted: here the restart is ours, with the Secret's files in the cert dir.
bg operator-first operator
until_true "KEDA's certificates" 120 kubectl -n keda get secret kedaorg-certs
until_true "the first operator to exit" 60 bash -c "! kill -0 ${pids[-1]}"
for k in ca.crt tls.crt tls.key; do
  kubectl -n keda get secret kedaorg-certs -o "jsonpath={.data.${k//./\\.}}" | base64 -d >"$T/certs/$k"
done
bg operator operator
bg adapter env POD_NAMESPACE=keda WATCH_NAMESPACE='' "$KEDA_BIN_DIR/keda-adapter" \
  --lister-kubeconfig "$KUBECONFIG" --authentication-kubeconfig "$KUBECONFIG" --authorization-kubeconfig "$KUBECONFIG" \
  --secure-port=16443 --bind-address="$BRIDGE_ADDR" --port 18082 --cert-dir="$T/certs" \
  --client-ca-file="$T/certs/ca.crt" --tls-cert-file="$T/certs/tls.crt" --tls-private-key-file="$T/certs/tls.key" \
  --metrics-service-address=127.0.0.1:19666 --metrics-service-grpc-authority=keda-operator.keda.svc
until_true "APIService v1beta1.external.metrics.k8s.io Available" 120 \
  kubectl wait --for=condition=Available apiservice/v1beta1.external.metrics.k8s.io --timeout=1s
echo "check-private: external.metrics.k8s.io available through the aggregation layer" >&2

curl -sSf "$SQS/" -d Action=CreateQueue -d "QueueName=$queue" >/dev/null
kubectl create namespace check >/dev/null
kubectl apply -n check -f - >/dev/null <<YAML
apiVersion: v1
kind: Secret
metadata: {name: aws}
stringData: {AWS_ACCESS_KEY_ID: test, AWS_SECRET_ACCESS_KEY: test}
---
apiVersion: keda.sh/v1alpha1
kind: TriggerAuthentication
metadata: {name: aws}
spec:
  secretTargetRef:
  - {parameter: awsAccessKeyID, name: aws, key: AWS_ACCESS_KEY_ID}
  - {parameter: awsSecretAccessKey, name: aws, key: AWS_SECRET_ACCESS_KEY}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: target}
spec:
  replicas: 0
  selector: {matchLabels: {app: target}}
  template:
    metadata: {labels: {app: target}}
    spec: {containers: [{name: c, image: qwp-testbox:dev}]}
---
apiVersion: keda.sh/v1alpha1
kind: ScaledObject
metadata: {name: target}
spec:
  scaleTargetRef: {name: target}
  minReplicaCount: 0
  maxReplicaCount: 3
  pollingInterval: 2
  cooldownPeriod: 5
  triggers:
  - type: aws-sqs-queue
    authenticationRef: {name: aws}
    metadata:
      queueURL: $SQS/000000000000/$queue
      awsEndpoint: $SQS
      awsRegion: us-east-1
      queueLength: "1"
YAML
replicas() { [[ $(kubectl -n check get deploy target -o 'jsonpath={.spec.replicas}') == "$1" ]]; }
until_true "ScaledObject Ready" 60 bash -c \
  "[[ \$(kubectl -n check get scaledobject target -o 'jsonpath={.status.conditions[?(@.type==\"Ready\")].status}') == True ]]"
for i in 1 2 3; do curl -sSf "$SQS/000000000000/$queue" -d Action=SendMessage -d "MessageBody=m$i" >/dev/null; done
until_true "0 -> 1 (KEDA activation)" 60 bash -c "[[ \$(kubectl -n check get deploy target -o 'jsonpath={.spec.replicas}') -ge 1 ]]"
until_true "1 -> 3 (the HPA reading 3 messages through the adapter)" 90 replicas 3
echo "check-private: 0 -> 1 -> 3 on 3 messages" >&2
curl -sSf "$SQS/000000000000/$queue" -d Action=PurgeQueue >/dev/null
until_true "3 -> 0 (cooldown)" 90 replicas 0
echo "check-private: passed (0 -> 1 -> 3 -> 0)" >&2
