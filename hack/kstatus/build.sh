#!/usr/bin/env bash
# Builds the kstatus program of this folder (sigs.k8s.io/cli-utils from the Go
# module proxy) into the cache, once per go.mod, go.sum, main.go and Go
# toolchain, and prints the path of the binary. About 25 s the first time on
# two cores, then instant.
#
#   hack/kstatus/build.sh            -> ~/.cache/ctrlplane-operator/kstatus/<key>/kstatus
#
# hack/test.sh runs it and exports CTRLPLANE_KSTATUS; tests/gitops.rs runs it
# itself when that is not set.
set -euo pipefail
dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
command -v go >/dev/null || { echo "kstatus: go is not installed" >&2; exit 1; }
cache=${XDG_CACHE_HOME:-$HOME/.cache}/ctrlplane-operator/kstatus
key=$({ go env GOVERSION; cat "$dir/go.mod" "$dir/go.sum" "$dir/main.go"; } | sha256sum | cut -c1-12)
out=$cache/$key/kstatus
if [[ ! -x $out ]]; then
  mkdir -p "$cache/$key"
  started=$SECONDS
  # A name of its own per build, so two builds at once never mix.
  (cd "$dir" && CGO_ENABLED=0 go build -trimpath -buildvcs=false -ldflags "-s -w" -o "$out.$$" .) >&2
  mv -f "$out.$$" "$out"
  echo "kstatus: built in $((SECONDS - started))s into $out" >&2
fi
echo "$out"
