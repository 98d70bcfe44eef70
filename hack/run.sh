#!/usr/bin/env bash
# The main command: a local control plane, the operator, and the samples.
#
#   hack/run.sh            start everything, show the Instances reaching Running,
#                          then keep running (watching them) until Ctrl-C, and clean up
#   hack/run.sh --once     the same, but stop and clean up once they are Running
#
# The operator's log goes to .controlplane/logs/operator.log; its metrics and
# health endpoints listen on $CTRLPLANE_METRICS_ADDRESS (default 127.0.0.1:18080).
set -euo pipefail
repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo_root"

once=false
[[ ${1:-} == --once ]] && once=true
namespace=${CTRLPLANE_SAMPLES_NAMESPACE:-ctrlplane-samples}
metrics_address=${CTRLPLANE_METRICS_ADDRESS:-127.0.0.1:18080}
state_dir=${CTRLPLANE_STATE_DIR:-$repo_root/.controlplane}

say() { printf '\n==> %s\n' "$*"; }

say "building the operator"
cargo build --locked --bin ctrlplane-operator

say "starting the local control plane"
hack/controlplane.sh up
eval "$(hack/controlplane.sh env)"

operator_pid=
cleanup() {
  trap - EXIT INT TERM
  say "cleaning up"
  # The samples go while the operator still runs: their finalizers are its
  # to release. A namespace left terminating would be kept in the control
  # plane's state and refuse the samples on the next run.
  if [[ -n $operator_pid ]] && kill -0 "$operator_pid" 2>/dev/null; then
    kubectl delete namespace "$namespace" --ignore-not-found --timeout=120s >/dev/null 2>&1 || true
    kill -TERM "$operator_pid" 2>/dev/null || true
    wait "$operator_pid" 2>/dev/null || true
  fi
  kubectl delete persistentvolume -l ctrlplane.dev/sample=true --wait=false >/dev/null 2>&1 || true
  hack/controlplane.sh down
}
trap cleanup EXIT INT TERM

say "installing the CRDs"
kubectl apply --server-side --force-conflicts -f crds/ >/dev/null
kubectl wait --for=condition=Established --timeout=60s \
  crd/instances.ctrlplane.dev crd/sandboxes.ctrlplane.dev crd/webhooks.ctrlplane.dev \
  crd/webhookdeliveries.ctrlplane.dev >/dev/null

say "starting the operator (log: $state_dir/logs/operator.log)"
mkdir -p "$state_dir/logs"
target/debug/ctrlplane-operator run --metrics-address "$metrics_address" --log-format text \
  >"$state_dir/logs/operator.log" 2>&1 &
operator_pid=$!
deadline=$((SECONDS + 60))
until curl -fs "http://$metrics_address/readyz" >/dev/null 2>&1; do
  kill -0 "$operator_pid" 2>/dev/null || { tail -20 "$state_dir/logs/operator.log"; exit 1; }
  (( SECONDS < deadline )) || { echo "the operator did not become ready"; exit 1; }
  sleep 0.2
done

say "creating static volumes for the sample Sandbox's claim (nothing provisions them here)"
for i in 0 1 2; do
  cat <<PV | kubectl apply --server-side -f - >/dev/null
apiVersion: v1
kind: PersistentVolume
metadata:
  name: ctrlplane-sample-pv-$i
  labels: {ctrlplane.dev/sample: "true"}
spec:
  capacity: {storage: 20Gi}
  accessModes: [ReadWriteOnce]
  storageClassName: standard
  hostPath: {path: /tmp/ctrlplane-sample-pv-$i}
PV
done

if [[ $(kubectl get namespace "$namespace" -o jsonpath='{.status.phase}' 2>/dev/null) == Terminating ]]; then
  say "waiting for namespace $namespace, left terminating by an interrupted run, to go"
  kubectl wait --for=delete "namespace/$namespace" --timeout=180s
fi

say "applying the samples into namespace $namespace"
kubectl create namespace "$namespace" --dry-run=client -o yaml | kubectl apply --server-side -f - >/dev/null
kubectl apply --server-side -n "$namespace" -f samples/

say "waiting for the Instances and the Sandbox to be Ready"
kubectl wait --for=condition=Ready --timeout=120s -n "$namespace" instance --all
kubectl wait --for=condition=Ready --timeout=120s -n "$namespace" sandbox --all
kubectl get instances -n "$namespace"
echo
kubectl get ctrlplane -n "$namespace"

if $once; then
  exit 0
fi
say "running; watching the Instances and Sandboxes (Ctrl-C stops the operator and the control plane)"
kubectl get instances,sandboxes -n "$namespace" --watch
