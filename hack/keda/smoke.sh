#!/usr/bin/env bash
# KEDA smoke check (run by `make keda-up`): a ScaledObject with the aws-sqs-queue scaler on a
# LocalStack queue scales a Deployment 0 -> 1 when a message arrives, the HPA KEDA made reads
# the queue length through the external-metrics API (the aggregation layer), and the
# Deployment goes back 1 -> 0 once the queue is empty. Own namespace and queue, removed after.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
export KUBECONFIG="$KUBECONFIG_PATH" PATH="$BIN_DIR:$PATH"
T0=$SECONDS
HOST_ADDR=$("$CLUSTER_DIR/host-addr.sh")
SQS=${AWS_ENDPOINT_URL:-http://127.0.0.1:4566}
id=$(head -c4 /dev/urandom | od -An -tx1 | tr -d ' \n')
ns=keda-smoke-$id queue=keda-smoke-$id
# Two path parts, as the scaler requires; LocalStack answers on this form too.
queue_path=/000000000000/$queue
sqs() { curl -sSf "$SQS$queue_path" -H 'Accept: application/json' "$@" >/dev/null; }
cleanup() {
  kubectl delete namespace "$ns" --ignore-not-found --wait=false >/dev/null 2>&1 || true
  sqs -d Action=DeleteQueue 2>/dev/null || true
}
trap cleanup EXIT
fail() {
  kubectl -n "$ns" get scaledobject,hpa,deploy,pods -o wide >&2 || true
  kubectl -n "$ns" describe hpa >&2 || true
  kubectl -n "$KEDA_NAMESPACE" logs deploy/keda-operator --tail=40 >&2 || true
  die "keda smoke: $*"
}
wait_until() { # wait_until <what> <seconds> <cmd...>
  local what=$1 secs=$2 i; shift 2
  for ((i = 0; i < secs; i++)); do "$@" && return 0; sleep 1; done
  fail "timed out after ${secs}s waiting for $what"
}
replicas() { [[ "$(kubectl -n "$ns" get deploy smoke -o 'jsonpath={.status.readyReplicas}/{.spec.replicas}')" == "$1" ]]; }

curl -sSf "$SQS/" -d Action=CreateQueue -d "QueueName=$queue" >/dev/null
kubectl create namespace "$ns" >/dev/null
kubectl apply -n "$ns" -f - >/dev/null <<YAML
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
metadata: {name: smoke}
spec:
  replicas: 0
  selector: {matchLabels: {app: smoke}}
  template:
    metadata: {labels: {app: smoke}}
    spec:
      terminationGracePeriodSeconds: 1
      automountServiceAccountToken: false
      containers:
      - name: sleeper
        image: qwp-testbox:dev
        imagePullPolicy: IfNotPresent
        command: [/bin/sh, -c, 'trap "exit 0" TERM; while :; do sleep 1; done']
---
apiVersion: keda.sh/v1alpha1
kind: ScaledObject
metadata: {name: smoke}
spec:
  scaleTargetRef: {name: smoke}
  minReplicaCount: 0
  maxReplicaCount: 1
  pollingInterval: 2
  cooldownPeriod: 5
  triggers:
  - type: aws-sqs-queue
    authenticationRef: {name: aws}
    metadata:
      queueURL: http://$HOST_ADDR:4566$queue_path
      awsEndpoint: http://$HOST_ADDR:4566
      awsRegion: us-east-1
      queueLength: "1"
YAML
wait_until "ScaledObject Ready" 60 bash -c "[[ \$(kubectl -n $ns get scaledobject smoke -o 'jsonpath={.status.conditions[?(@.type==\"Ready\")].status}') == True ]]"
replicas "/0" || fail "Deployment not at 0 before any message"
sqs -d Action=SendMessage -d MessageBody=smoke
wait_until "0 -> 1 ready replica" 120 replicas "1/1"
echo "keda smoke: 0 -> 1 after a message ($((SECONDS - T0))s)" >&2
# The HPA (keda-hpa-smoke) reads the queue through the adapter: the aggregation layer works.
wait_until "the HPA to read the metric via external.metrics.k8s.io" 60 bash -c \
  "[[ -n \$(kubectl -n $ns get hpa keda-hpa-smoke -o 'jsonpath={.status.currentMetrics[0].external.current.averageValue}') ]]"
metric=$(kubectl -n "$ns" get hpa keda-hpa-smoke -o 'jsonpath={.status.currentMetrics[0].external.metric.name}')
value=$(kubectl get --raw "/apis/external.metrics.k8s.io/v1beta1/namespaces/$ns/$metric?labelSelector=scaledobject.keda.sh%2Fname%3Dsmoke")
[[ $value == *'"value"'* ]] || fail "external.metrics.k8s.io gave no value for $metric"
echo "keda smoke: HPA reads $metric through external.metrics.k8s.io" >&2
sqs -d Action=PurgeQueue
wait_until "1 -> 0 replicas" 120 replicas "/0"
echo "keda smoke: passed (0 -> 1 -> 0 in $((SECONDS - T0))s)" >&2
