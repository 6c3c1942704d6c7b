# LocalStack dev stack (S3 + SQS). Included by the root Makefile:
#   include hack/localstack/localstack.mk
# Set LOCALSTACK_LISTEN=0.0.0.0:4566 to let Kubernetes pods on this host reach it.

LOCALSTACK_SH := $(abspath $(dir $(lastword $(MAKEFILE_LIST))))/localstack.sh

.PHONY: localstack-install localstack-up localstack-down localstack-status localstack-init

localstack-install:
	$(LOCALSTACK_SH) install

localstack-up:
	$(LOCALSTACK_SH) up

localstack-down:
	$(LOCALSTACK_SH) down

localstack-status:
	$(LOCALSTACK_SH) status

localstack-init:
	$(LOCALSTACK_SH) init
