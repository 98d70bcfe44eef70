//go:build tools

// Package tools keeps the external-snapshotter client module required (its
// config/crd/ holds the CRDs), so that `go mod tidy` does not drop it.
package tools

import _ "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
