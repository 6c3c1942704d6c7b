//go:build tools

// Package tools pins the KEDA commands built by hack/keda/build.sh.
package tools

import (
	_ "github.com/kedacore/keda/v2/cmd/adapter"
	_ "github.com/kedacore/keda/v2/cmd/operator"
)
