#!/usr/bin/env bash
# Smoke test of the local cluster ("done when" of the cluster issue). Needs `make cluster-up`.
#  1. node Ready                       4. SIGTERM reaches the container, grace period honoured
#  2. a pod runs, `kubectl logs` works 5. ClusterIP Service (kube-proxy) and pod -> host address
#  3. Deployment 0 -> 3 -> 0           6. qwp-* images (if imported) start their binary
#  (5 also: in-cluster API access with a service account token, from the qwp-kubectl image)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
NS=qwp-smoke
IMG="qwp-testbox:${QWP_IMAGE_TAG:-dev}"
PASS=0 FAIL=0
ok() { PASS=$((PASS + 1)); echo "ok   - $*"; }
fail() { FAIL=$((FAIL + 1)); echo "FAIL - $*" >&2; }
k() { kubectl -n "$NS" "$@"; }
cleanup() { kubectl delete namespace "$NS" --wait=false >/dev/null 2>&1 || true; }
trap cleanup EXIT

kubectl get node "$NODE_NAME" >/dev/null 2>&1 || { echo "cluster not up: run make cluster-up" >&2; exit 1; }
"$CLUSTER_DIR/images.sh" build >/dev/null
"$CLUSTER_DIR/images.sh" load >/dev/null
kubectl delete namespace "$NS" --ignore-not-found --wait=true --timeout=60s >/dev/null
kubectl create namespace "$NS" >/dev/null
for _ in $(seq 60); do k get serviceaccount default >/dev/null 2>&1 && break; sleep 0.5; done

# 1 --------------------------------------------------------------------------------------------
if st=$("$CLUSTER_DIR/status.sh" 2>&1); then ok "all cluster processes running"
else fail "cluster processes: $(grep stopped <<<"$st" | tr -s ' ' | tr '\n' ';')"; fi
if kubectl wait --for=condition=Ready "node/$NODE_NAME" --timeout=30s >/dev/null; then
  ok "node $NODE_NAME Ready ($(kubectl get node "$NODE_NAME" -o jsonpath='{.status.nodeInfo.kubeletVersion} {.status.nodeInfo.containerRuntimeVersion}'))"
else
  fail "node $NODE_NAME not Ready: $(kubectl get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].message}')"
fi

pod() { # pod <name> <script> [grace]
  cat <<EOF | k apply -f - >/dev/null
apiVersion: v1
kind: Pod
metadata: {name: $1, labels: {app: $1}}
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: ${3:-30}
  containers:
  - name: main
    image: $IMG
    imagePullPolicy: Never
    args: ["-c", $(printf '%s' "$2" | python3 -c 'import json,sys; print(json.dumps(sys.stdin.read()))')]
EOF
}

# 2 --------------------------------------------------------------------------------------------
pod hello 'echo "hello from $(hostname) uid=$(id -u)"; sleep 3600'
if k wait --for=condition=Ready pod/hello --timeout=90s >/dev/null; then
  out=""
  for _ in $(seq 20); do out=$(k logs hello 2>&1 || true); [[ $out == *"hello from hello"* ]] && break; sleep 0.5; done
  if [[ $out == *"hello from hello uid=65532"* ]]; then ok "pod runs as 65532 and kubectl logs shows: $out"
  else fail "kubectl logs hello: $out"; fi
else
  fail "pod hello not Ready: $(k get pod hello -o jsonpath='{.status}')"
fi

# 3 --------------------------------------------------------------------------------------------
cat <<EOF | k apply -f - >/dev/null
apiVersion: apps/v1
kind: Deployment
metadata: {name: scale}
spec:
  replicas: 0
  selector: {matchLabels: {app: scale}}
  template:
    metadata: {labels: {app: scale}}
    spec:
      terminationGracePeriodSeconds: 2
      containers:
      - {name: main, image: $IMG, imagePullPolicy: IfNotPresent, args: ["-c", "exec sleep 3600"]}
EOF
running_count() { k get pods -l app=scale --field-selector=status.phase=Running -o name 2>/dev/null | wc -l; }
t=$SECONDS
k scale deployment scale --replicas=3 >/dev/null
if k rollout status deployment scale --timeout=120s >/dev/null && [[ $(running_count) -eq 3 ]]; then
  ok "Deployment 0 -> 3: 3 pods Running in $((SECONDS - t))s"
else
  fail "Deployment 0 -> 3: $(k get pods -l app=scale -o wide 2>&1)"
fi
t=$SECONDS
k scale deployment scale --replicas=0 >/dev/null
gone=0
for _ in $(seq 120); do
  [[ -z "$(k get pods -l app=scale -o name 2>/dev/null)" ]] && { gone=1; break; }
  sleep 0.5
done
if ((gone)); then ok "Deployment 3 -> 0: all pods removed in $((SECONDS - t))s"
else fail "Deployment 3 -> 0: pods left: $(k get pods -l app=scale 2>&1)"; fi

# 4 --------------------------------------------------------------------------------------------
pod graceful 'trap "echo got SIGTERM; sleep 3; echo graceful exit after 3s; exit 0" TERM; echo ready; while true; do sleep 0.2; done' 20
if k wait --for=condition=Ready pod/graceful --timeout=60s >/dev/null; then
  sleep 1
  logf=$(mktemp)
  k logs -f graceful > "$logf" 2>&1 &
  lp=$!
  sleep 1
  t=$SECONDS
  k delete pod graceful --wait=true --timeout=60s >/dev/null
  took=$((SECONDS - t))
  wait "$lp" 2>/dev/null || true
  if grep -q "got SIGTERM" "$logf" && grep -q "graceful exit after 3s" "$logf" && ((took >= 3)); then
    ok "SIGTERM delivered, container finished its 3s shutdown within the 20s grace period (delete took ${took}s)"
  else
    fail "SIGTERM/grace: delete took ${took}s, logs: $(tr '\n' '|' < "$logf")"
  fi
  rm -f "$logf"
else
  fail "pod graceful not Ready"
fi

# a container that ignores SIGTERM is killed when its grace period (4s) runs out
pod stubborn 'trap "echo ignoring SIGTERM" TERM; echo ready; while true; do sleep 0.2; done' 4
if k wait --for=condition=Ready pod/stubborn --timeout=60s >/dev/null; then
  sleep 1
  t=$SECONDS
  k delete pod stubborn --wait=true --timeout=60s >/dev/null
  took=$((SECONDS - t))
  if ((took >= 4 && took <= 15)); then ok "container ignoring SIGTERM killed after its 4s grace period (delete took ${took}s)"
  else fail "grace period expiry: delete took ${took}s (expected 4-15s)"; fi
else
  fail "pod stubborn not Ready"
fi

# 5 --------------------------------------------------------------------------------------------
pod web 'mkdir -p /tmp/www && echo qwp-service-ok > /tmp/www/index.html && exec httpd -f -p 8080 -h /tmp/www'
cat <<EOF | k apply -f - >/dev/null
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
EOF
k wait --for=condition=Ready pod/web --timeout=60s >/dev/null || true
SVC_IP=$(k get service web -o jsonpath='{.spec.clusterIP}')
out=""
for _ in $(seq 20); do
  # (busybox-static's wget segfaults on this glibc; nc does the HTTP request instead)
  out=$(k exec hello -- sh -c "printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 3 $SVC_IP 80" 2>&1 || true)
  [[ $out == *qwp-service-ok* ]] && break
  sleep 1
done
if [[ $out == *qwp-service-ok* ]]; then ok "pod -> ClusterIP Service $SVC_IP:80 -> pod"
else fail "pod -> ClusterIP $SVC_IP:80: $out"; fi
# kubernetes API from a pod via the kubernetes Service
out=$(k exec hello -- sh -c "nc -w 3 $KUBERNETES_SVC_IP 443 </dev/null && echo open" 2>&1 || true)
if [[ $out == *open* ]]; then ok "pod -> kubernetes Service $KUBERNETES_SVC_IP:443 reachable"
else fail "pod -> kubernetes Service $KUBERNETES_SVC_IP:443: $out"; fi
# in-cluster API access with a service account token (what the operator does)
cat <<EOF | k apply -f - >/dev/null
apiVersion: v1
kind: ServiceAccount
metadata: {name: reader}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: reader-view}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: view}
subjects: [{kind: ServiceAccount, name: reader, namespace: $NS}]
---
apiVersion: v1
kind: Pod
metadata: {name: incluster}
spec:
  serviceAccountName: reader
  restartPolicy: Never
  containers:
  - {name: main, image: "qwp-kubectl:${QWP_IMAGE_TAG:-dev}", imagePullPolicy: Never, args: ["get", "pod", "hello", "-o", "name"]}
EOF
phase=""
for _ in $(seq 60); do
  phase=$(k get pod incluster -o jsonpath='{.status.phase}' 2>/dev/null)
  [[ $phase == Succeeded || $phase == Failed ]] && break
  sleep 1
done
out=$(k logs incluster 2>&1 || true)
if [[ $phase == Succeeded && $out == "pod/hello" ]]; then ok "pod -> API server over TLS with its service account token (kubectl in a pod: $out)"
else fail "in-cluster API access: phase=$phase logs: $out"; fi
# host services through QWP_HOST_ADDR (LocalStack on 127.0.0.1:4566 when it runs)
if (exec 3<>/dev/tcp/127.0.0.1/4566) 2>/dev/null; then
  out=$(k exec hello -- sh -c "nc -w 3 $QWP_HOST_ADDR 4566 </dev/null && echo open" 2>&1 || true)
  if [[ $out == *open* ]]; then ok "pod -> host 127.0.0.1:4566 (LocalStack) via $QWP_HOST_ADDR:4566"
  else fail "pod -> $QWP_HOST_ADDR:4566: $out"; fi
else
  echo "skip - nothing listens on 127.0.0.1:4566 (start hack/localstack to test pod -> host)"
fi

# helm from the same build talks to the cluster
if out=$(helm version --short 2>&1) && helm list --all-namespaces >/dev/null 2>&1; then ok "helm $out reaches the cluster"
else fail "helm: $out"; fi

# 6 --------------------------------------------------------------------------------------------
for name in qwp-worker qwp-operator qwp-api-server; do
  ctr --address "$CONTAINERD_SOCK" -n k8s.io images ls -q 2>/dev/null | grep -q "/$name:" || continue
  cat <<EOF | k apply -f - >/dev/null
apiVersion: v1
kind: Pod
metadata: {name: $name}
spec:
  restartPolicy: Never
  containers:
  - {name: main, image: "$name:${QWP_IMAGE_TAG:-dev}", imagePullPolicy: Never, args: ["--help"]}
EOF
  state=""
  for _ in $(seq 60); do
    state=$(k get pod "$name" -o jsonpath='{.status.containerStatuses[0].state}' 2>/dev/null)
    [[ $state == *terminated* || $state == *running* || $state == *Error* ]] && break
    sleep 1
  done
  if [[ $state == *terminated* || $state == *running* ]] && [[ $state != *StartError* ]]; then
    ok "$name image starts its binary: $(k logs "$name" 2>&1 | head -n 1)"
  else
    fail "$name image: $state"
  fi
done

echo "smoke: $PASS passed, $FAIL failed"
((FAIL == 0))
