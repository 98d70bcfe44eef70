#!/usr/bin/env bash
# Runs a benchmark under bench/ against a fresh local control plane.
#
#   hack/bench.sh instances [N]     N Instances (default 1000) vs. a plain-client baseline
#   hack/bench.sh webhooks [N]      N lifecycle events (default 2000) to 1 and 10 receivers,
#                                   vs. signed POSTs from a plain client and bare object creates
#   hack/bench.sh sandboxes [N]     N Sandboxes (default 500) up and down vs. the same claims
#                                   and pods from a plain client
#   hack/bench.sh commands [N] [M]  N SandboxCommands (default 200) across M Sandboxes (default
#                                   10) vs. the same execs from a plain client
#
# Builds the operator in release mode, starts a control plane of its own
# (state in .controlplane-bench/, its own ports), runs the benchmark, stops it.
set -euo pipefail
repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo_root"

bench=${1:?usage: hack/bench.sh instances|webhooks|sandboxes|commands [N]}
shift
export CTRLPLANE_STATE_DIR=${CTRLPLANE_BENCH_STATE_DIR:-$repo_root/.controlplane-bench}
export CTRLPLANE_PORT_BASE=${CTRLPLANE_BENCH_PORT_BASE:-16740}

cargo build --locked --release --bin ctrlplane-operator
cargo build --locked --release --bench "$bench"
hack/controlplane.sh down --purge >/dev/null 2>&1 || true
trap 'hack/controlplane.sh down' EXIT
hack/controlplane.sh up
eval "$(hack/controlplane.sh env)"
kubectl apply --server-side --force-conflicts -f crds/ >/dev/null
kubectl wait --for=condition=Established --timeout=60s crd/instances.ctrlplane.dev >/dev/null
cargo bench --locked --bench "$bench" -- "$@"
