#!/usr/bin/env bash
# Generate the cluster CA, component certificates and kubeconfigs (kubeadm-style) with openssl.
# Existing files are kept, so `cluster-up` is idempotent.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
mkdir -p "$PKI_DIR" && cd "$PKI_DIR"
umask 077

if [[ ! -f ca.crt ]]; then
  openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 3650 \
    -subj "/CN=qwp-cluster-ca" -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,digitalSignature,keyEncipherment,keyCertSign" 2>/dev/null
fi

# The aggregation layer's front proxy (kubeadm's front-proxy-ca): the API server proves to
# extension API servers (e.g. KEDA's metrics adapter) that it authenticated the user. A CA of
# its own, so its client certificate is accepted for nothing else.
if [[ ! -f front-proxy-ca.crt ]]; then
  openssl req -x509 -newkey rsa:2048 -nodes -keyout front-proxy-ca.key -out front-proxy-ca.crt -days 3650 \
    -subj "/CN=qwp-front-proxy-ca" -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,digitalSignature,keyEncipherment,keyCertSign" 2>/dev/null
fi

cert() { # cert <name> <subject> <extendedKeyUsage> [subjectAltName] [ca]
  local name=$1 subj=$2 eku=$3 san=${4:-} ca=${5:-ca}
  [[ -f $name.crt ]] && return 0
  openssl req -newkey rsa:2048 -nodes -keyout "$name.key" -out "$name.csr" -subj "$subj" 2>/dev/null
  {
    echo "basicConstraints=critical,CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=$eku"
    [[ -n $san ]] && echo "subjectAltName=$san"
  } > "$name.ext"
  openssl x509 -req -in "$name.csr" -CA "$ca.crt" -CAkey "$ca.key" -CAcreateserial -out "$name.crt" \
    -days 3650 -extfile "$name.ext" 2>/dev/null
  rm -f "$name.csr" "$name.ext"
}

cert apiserver "/CN=kube-apiserver" serverAuth \
  "DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost,DNS:$NODE_NAME,IP:127.0.0.1,IP:$BRIDGE_ADDR,IP:$KUBERNETES_SVC_IP"
cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" clientAuth
cert admin "/O=system:masters/CN=kubernetes-admin" clientAuth
cert controller-manager "/CN=system:kube-controller-manager" clientAuth
cert scheduler "/CN=system:kube-scheduler" clientAuth
cert kube-proxy "/CN=system:kube-proxy" clientAuth
cert kubelet "/O=system:nodes/CN=system:node:$NODE_NAME" clientAuth
cert kubelet-serving "/O=system:nodes/CN=system:node:$NODE_NAME" serverAuth \
  "DNS:$NODE_NAME,DNS:localhost,IP:127.0.0.1,IP:$BRIDGE_ADDR"
cert front-proxy-client "/CN=front-proxy-client" clientAuth "" front-proxy-ca
[[ -f sa.key ]] || { openssl genrsa -out sa.key 2048 2>/dev/null && openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null; }

kubeconfig() { # kubeconfig <file> <cert-name> <user>
  local file=$1 name=$2 user=$3
  cat > "$file" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: $CLUSTER_NAME
  cluster:
    server: https://127.0.0.1:$APISERVER_PORT
    certificate-authority-data: $(base64 -w0 < ca.crt)
users:
- name: $user
  user:
    client-certificate-data: $(base64 -w0 < "$name.crt")
    client-key-data: $(base64 -w0 < "$name.key")
contexts:
- name: $user@$CLUSTER_NAME
  context: {cluster: $CLUSTER_NAME, user: $user}
current-context: $user@$CLUSTER_NAME
EOF
}
kubeconfig admin.kubeconfig admin kubernetes-admin
kubeconfig controller-manager.kubeconfig controller-manager system:kube-controller-manager
kubeconfig scheduler.kubeconfig scheduler system:kube-scheduler
kubeconfig kube-proxy.kubeconfig kube-proxy system:kube-proxy
kubeconfig kubelet.kubeconfig kubelet "system:node:$NODE_NAME"
mkdir -p "$(dirname "$KUBECONFIG_PATH")"
install -m 600 admin.kubeconfig "$KUBECONFIG_PATH"
