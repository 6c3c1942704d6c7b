#!/usr/bin/env bash
# Print the host address pods reach (QWP_HOST_ADDR): the gateway of the cluster's pod bridge.
# Host TCP ports listed in QWP_HOST_PORTS (default 4566, LocalStack) are forwarded from
# $QWP_HOST_ADDR:<port> to 127.0.0.1:<port> by an iptables DNAT rule that cluster-up installs,
# so LocalStack may stay bound to 127.0.0.1. Example: AWS_ENDPOINT_URL=http://$(host-addr.sh):4566
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
echo "$BRIDGE_ADDR"
