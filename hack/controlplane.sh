#!/usr/bin/env bash
# A real, local Kubernetes control plane for development, tests and benchmarks.
#
#   hack/controlplane.sh build    build the pinned binaries into the cache (once per version)
#   hack/controlplane.sh up       build if needed, then start etcd, kube-apiserver,
#                                 kube-controller-manager, kube-scheduler and kwok on loopback
#   hack/controlplane.sh down     stop every process it started and wait until they are gone
#   hack/controlplane.sh status   show what is running (and what is paused)
#   hack/controlplane.sh env      print the exports that point kubectl at it
#
# One component at a time, for chaos tests (NAME: etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler, kwok):
#   hack/controlplane.sh stop NAME       stop it (SIGTERM, SIGKILL after 20s) and wait until it is gone
#   hack/controlplane.sh start NAME      start it again as `up` did, and wait until it is healthy
#   hack/controlplane.sh restart NAME    stop, then start
#   hack/controlplane.sh pause NAME      freeze it (SIGSTOP); it holds its sockets and answers nothing
#   hack/controlplane.sh continue NAME   let it run again (SIGCONT)
#
# Everything listens on, and talks to, 127.0.0.1 only. Certificates and the
# service-account key are generated per state directory; the API server runs with
# RBAC authorization.
#
# kwok plays the nodes (at 127.0.0.1, kubelet port = kwok's server, TLS from the
# local CA) and pods (kwok-stages.yaml). `kubectl exec` into any pod runs the
# command as a local process in <state dir>/exec/<namespace>/<pod>/
# (kwok-exec.yaml; kwok is built with hack/controlplane/kwok/kwok-exec.patch for
# exit codes, stdin and those directories). The VolumeSnapshot CRDs are
# installed with a default VolumeSnapshotClass, and kwok plays the snapshot
# controller too (kwok-snapshot-stages.yaml).
#
# Binaries are built from the Go module proxy (wrapper modules in hack/controlplane/*)
# into ${XDG_CACHE_HOME:-~/.cache}/ctrlplane-operator/controlplane/<component>-<version>-<hash>/,
# linked from .../controlplane/bin, so every clone and every CI run on a machine
# shares one build. helm is built the same way, for the chart's tests; the
# VolumeSnapshot CRDs are copied out of the external-snapshotter module's source.
#
# Settings (environment):
#   CTRLPLANE_STATE_DIR   certificates, kubeconfig, data and logs (default: <repo>/.controlplane)
#   CTRLPLANE_CACHE_DIR   where built binaries live (default: see above)
#   CTRLPLANE_PORT_BASE   first of a block of ports (default: 16440); the API server gets
#                         base+3, etcd base+4/base+5, controller-manager base+7,
#                         scheduler base+9, kwok base+1 (its kubelet-facing server)
#   CTRLPLANE_AUDIT_LOG   1: `up` turns on the API server's audit log, one JSON line per
#                         write request (create, update, patch, delete, deletecollection)
#                         at Metadata level (who, what, when, the answer's code; no
#                         bodies) in <state dir>/logs/audit.log. The policy is kept in
#                         the state directory, so `start`/`restart kube-apiserver` keep it.
set -euo pipefail

readonly KUBERNETES_VERSION=v1.36.3
readonly ETCD_VERSION=v3.6.16
readonly KWOK_VERSION=v0.8.0
# The CSI external-snapshotter's client module, for its VolumeSnapshot CRDs.
readonly SNAPSHOTTER_VERSION=v8.7.0

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
modules_dir="$repo_root/hack/controlplane"
state_dir=${CTRLPLANE_STATE_DIR:-$repo_root/.controlplane}
port_base=${CTRLPLANE_PORT_BASE:-16440}
kwok_port=$((port_base + 1))
apiserver_port=$((port_base + 3))
etcd_client_port=$((port_base + 4))
etcd_peer_port=$((port_base + 5))
kcm_port=$((port_base + 7))
scheduler_port=$((port_base + 9))

log() { printf '[controlplane] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

readonly HELM_VERSION=v3.22.0

cache_root() {
  echo "${CTRLPLANE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ctrlplane-operator/controlplane}"
}

# Each component (k8s, etcd, kwok, helm, snapshot-crds) is built into a folder of its own,
# keyed by its pinned version, its wrapper module's go.mod, go.sum and patches
# (*.patch), and the Go toolchain, so a change to one rebuilds only that one.
component_dir() {
  local component=$1 version
  case $component in
    k8s) version=$KUBERNETES_VERSION ;;
    etcd) version=$ETCD_VERSION ;;
    kwok) version=$KWOK_VERSION ;;
    helm) version=$HELM_VERSION ;;
    snapshot-crds) version=$SNAPSHOTTER_VERSION ;;
  esac
  local key
  key=$({
    echo "$version"; go env GOVERSION; cat "$modules_dir/$component/go.mod" "$modules_dir/$component/go.sum"
    local patch_file
    for patch_file in "$modules_dir/$component"/*.patch; do
      if [[ -f $patch_file ]]; then cat "$patch_file"; fi
    done
  } | sha256sum | cut -c1-12)
  echo "$(cache_root)/$component-$version-$key"
}

# component_binaries COMPONENT: the executables it builds, linked into bin_dir.
component_binaries() {
  case $1 in
    k8s) echo kube-apiserver kube-controller-manager kube-scheduler kubectl ;;
    etcd) echo etcd ;;
    kwok) echo kwok ;;
    helm) echo helm ;;
    snapshot-crds) ;;
  esac
}

readonly SNAPSHOT_CRDS=(volumesnapshotclasses volumesnapshotcontents volumesnapshots)

# component_files COMPONENT: everything its folder holds once built.
component_files() {
  case $1 in
    snapshot-crds) printf 'snapshot.storage.k8s.io_%s.yaml\n' "${SNAPSHOT_CRDS[@]}" ;;
    *) component_binaries "$1" ;;
  esac
}

readonly COMPONENTS=(k8s etcd kwok helm snapshot-crds)

# One folder with every binary (symbolic links into the component folders),
# for PATH.
bin_dir() {
  echo "$(cache_root)/bin"
}

# patched_modfile MODULE PATCH OUT: a copy of MODULE's source (the version
# that the wrapper module in the current directory pins, from the module
# cache) in OUT/src with PATCH applied, and a copy of the wrapper's go.mod and
# go.sum in OUT that replaces MODULE with it; prints that go.mod's path, for
# `go build -modfile`. (`go build -overlay` cannot replace files in the module
# cache.)
patched_modfile() {
  local module=$1 patch_file=$2 out=$3 src
  go mod download "$module"
  src=$(go list -m -f '{{.Dir}}' "$module")
  mkdir -p "$out"
  cp -r "$src" "$out/src"; chmod -R u+w "$out/src"
  patch --quiet --forward -p1 -d "$out/src" < "$patch_file"
  cp go.mod go.sum "$out/"
  go mod edit -replace="$module=$out/src" "$out/go.mod"
  echo "$out/go.mod"
}

build_component() {
  local component=$1 dir tmp started=$SECONDS
  dir=$(component_dir "$component")
  local missing=0 b
  for b in $(component_files "$component"); do [[ -s "$dir/$b" ]] || missing=1; done
  if (( missing == 0 )); then
    return
  fi
  tmp="$dir.partial"
  rm -rf "$tmp"; mkdir -p "$tmp"
  case $component in
    k8s)
      local minor=${KUBERNETES_VERSION#v1.}; minor=${minor%%.*}
      local build_date; build_date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
      # The same variables that Kubernetes' own build sets (hack/lib/version.sh),
      # so that `--version` and the /version endpoint report the pinned release.
      local ldflags="-s -w" pkg
      for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        ldflags+=" -X $pkg.gitVersion=$KUBERNETES_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
        ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$build_date"
      done
      log "building Kubernetes $KUBERNETES_VERSION (kube-apiserver, kube-controller-manager, kube-scheduler, kubectl)"
      (cd "$modules_dir/k8s" && CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$tmp/" \
        k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
        k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl)
      ;;
    etcd)
      log "building etcd $ETCD_VERSION"
      (cd "$modules_dir/etcd" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$tmp/etcd" go.etcd.io/etcd/server/v3)
      ;;
    kwok)
      # With kwok-exec.patch (exit codes, stdin, per-pod exec directories; see the patch).
      log "building kwok $KWOK_VERSION with hack/controlplane/kwok/kwok-exec.patch"
      (cd "$modules_dir/kwok" \
        && modfile=$(patched_modfile sigs.k8s.io/kwok "$modules_dir/kwok/kwok-exec.patch" "$tmp/patched") \
        && CGO_ENABLED=0 go build -trimpath -modfile="$modfile" \
          -ldflags "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=$KWOK_VERSION" -o "$tmp/kwok" sigs.k8s.io/kwok/cmd/kwok)
      rm -rf "$tmp/patched"
      ;;
    snapshot-crds)
      # Not built: the CRD manifests are copied out of the module's source.
      log "fetching the VolumeSnapshot CRDs of external-snapshotter $SNAPSHOTTER_VERSION"
      local module=github.com/kubernetes-csi/external-snapshotter/client/v8 src crd
      src=$(cd "$modules_dir/snapshot-crds" && go mod download "$module" && go list -m -f '{{.Dir}}' "$module")
      for crd in $(component_files snapshot-crds); do
        cp "$src/config/crd/$crd" "$tmp/$crd"; chmod u+w "$tmp/$crd"
      done
      ;;
    helm)
      log "building helm $HELM_VERSION"
      (cd "$modules_dir/helm" && CGO_ENABLED=0 go build -trimpath \
        -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" -o "$tmp/helm" helm.sh/helm/v3/cmd/helm)
      ;;
  esac
  rm -rf "$dir"; mv "$tmp" "$dir"
  log "built $component in $((SECONDS - started))s into $dir"
}

cmd_build() {
  command -v go >/dev/null || die "go is not installed"
  local component b
  for component in "${COMPONENTS[@]}"; do
    build_component "$component"
  done
  mkdir -p "$(bin_dir)"
  for component in "${COMPONENTS[@]}"; do
    for b in $(component_binaries "$component"); do
      ln -sfn "$(component_dir "$component")/$b" "$(bin_dir)/$b"
    done
  done
  log "binaries are ready in $(bin_dir)"
}

# ---------------------------------------------------------------- certificates

gen_certs() {
  local pki=$state_dir/pki
  [[ -f $pki/.complete ]] && return
  rm -rf "$pki"; mkdir -p "$pki"
  log "generating certificates in $pki"
  (
    cd "$pki"
    openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 3650 \
      -subj "/CN=ctrlplane-local-ca" 2>/dev/null
    openssl genrsa -out sa.key 2048 2>/dev/null
    openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
    cat > apiserver.ext <<EOF
subjectAltName=IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local
extendedKeyUsage=serverAuth
keyUsage=digitalSignature,keyEncipherment
EOF
    sign apiserver "/CN=kube-apiserver" apiserver.ext
    printf 'extendedKeyUsage=clientAuth\nkeyUsage=digitalSignature,keyEncipherment\n' > client.ext
    sign admin "/O=system:masters/CN=ctrlplane-admin" client.ext
    sign controller-manager "/CN=system:kube-controller-manager" client.ext
    sign scheduler "/CN=system:kube-scheduler" client.ext
    sign kwok "/O=system:masters/CN=kwok" client.ext
    touch .complete
  )
}

# gen_kwok_serving_cert: the certificate of kwok's kubelet-facing server, which
# the API server verifies (--kubelet-certificate-authority) when it forwards
# exec, logs and port-forward to a node at 127.0.0.1. Separate from gen_certs so
# that a state directory from before it existed gets one too.
gen_kwok_serving_cert() {
  local pki=$state_dir/pki
  [[ -f $pki/kwok-serving.crt && -f $pki/kwok-serving.key ]] && return
  (
    cd "$pki"
    printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\nkeyUsage=digitalSignature,keyEncipherment\n' \
      > kwok-serving.ext
    sign kwok-serving "/CN=kwok-kubelet" kwok-serving.ext
  )
}

# sign NAME SUBJECT EXTFILE: a key and a certificate signed by the local CA.
sign() {
  openssl req -newkey rsa:2048 -nodes -keyout "$1.key" -out "$1.csr" -subj "$2" 2>/dev/null
  openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -out "$1.crt" \
    -days 3650 -extfile "$3" 2>/dev/null
  rm -f "$1.csr"
}

# write_kubeconfig FILE USER: a kubeconfig that authenticates with USER's client certificate.
write_kubeconfig() {
  local pki=$state_dir/pki
  cat > "$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: ctrlplane-local
  cluster:
    server: https://127.0.0.1:$apiserver_port
    certificate-authority: $pki/ca.crt
users:
- name: $2
  user:
    client-certificate: $pki/$2.crt
    client-key: $pki/$2.key
contexts:
- name: ctrlplane-local
  context: {cluster: ctrlplane-local, user: $2}
current-context: ctrlplane-local
EOF
}

# ------------------------------------------------------------------- processes

pid_file() { echo "$state_dir/run/$1.pid"; }

is_running() {
  local f; f=$(pid_file "$1")
  [[ -f $f ]] && kill -0 "$(cat "$f")" 2>/dev/null
}

# start NAME BINARY ARGS...: run in its own session, logs to logs/NAME.log
# (appended, so a restarted component's earlier log is kept).
start() {
  local name=$1; shift
  if is_running "$name"; then log "$name is already running"; return; fi
  mkdir -p "$state_dir/run" "$state_dir/logs"
  printf -- '--- %s: started by hack/controlplane.sh\n' "$(date -u +%Y-%m-%dT%H:%M:%S.%NZ)" \
    >>"$state_dir/logs/$name.log"
  setsid "$@" >>"$state_dir/logs/$name.log" 2>&1 < /dev/null &
  echo $! > "$(pid_file "$name")"
}

# wait_for DESCRIPTION TIMEOUT_SECONDS COMMAND...: poll COMMAND until it succeeds.
wait_for() {
  local what=$1 timeout=$2; shift 2
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    if (( SECONDS >= deadline )); then
      die "$what did not become ready within ${timeout}s (logs: $state_dir/logs)"
    fi
    sleep 0.2
  done
}

healthy() { # healthy NAME URL [PATTERN]: the process is alive and its health endpoint answers PATTERN.
  is_running "$1" || die "$1 exited; see $state_dir/logs/$1.log"
  curl -fsk --max-time 2 "$2" | grep -q "${3:-ok}"
}

apiserver_ready() {
  is_running kube-apiserver || die "kube-apiserver exited; see $state_dir/logs/kube-apiserver.log"
  curl -fs --max-time 2 --cacert "$state_dir/pki/ca.crt" --cert "$state_dir/pki/admin.crt" \
    --key "$state_dir/pki/admin.key" "https://127.0.0.1:$apiserver_port/readyz" | grep -q ok
}

# The audit policy `up` writes when CTRLPLANE_AUDIT_LOG=1: every write
# request, at Metadata level (user, impersonated user, verb, object, code and
# times; no bodies), once it is answered; nothing else.
readonly AUDIT_POLICY='apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: Metadata
  verbs: [create, update, patch, delete, deletecollection]
- level: None'

audit_policy_file() { echo "$state_dir/audit-policy.yaml"; }

# start_component NAME: starts one component as `up` does (certificates and
# kubeconfigs must exist), without waiting for it.
start_component() {
  local bin pki=$state_dir/pki
  bin=$(bin_dir)
  case $1 in
    etcd)
      start etcd "$bin/etcd" --name=ctrlplane-local --data-dir="$state_dir/etcd" \
        --listen-client-urls="http://127.0.0.1:$etcd_client_port" \
        --advertise-client-urls="http://127.0.0.1:$etcd_client_port" \
        --listen-peer-urls="http://127.0.0.1:$etcd_peer_port" \
        --initial-advertise-peer-urls="http://127.0.0.1:$etcd_peer_port" \
        --initial-cluster="ctrlplane-local=http://127.0.0.1:$etcd_peer_port" \
        --listen-metrics-urls="http://127.0.0.1:$((port_base + 6))" \
        --unsafe-no-fsync --quota-backend-bytes=8589934592 --log-level=warn
      ;;
    kube-apiserver)
      # The endpoint reconciler is off because the API server advertises a loopback
      # address, which is not a valid Endpoints address for the `kubernetes` Service.
      # Exec, logs and port-forward go to a node's InternalIP only (never a name
      # that would need DNS), which kwok reports as 127.0.0.1, over TLS checked
      # against the local CA.
      local audit=()
      if [[ -f $(audit_policy_file) ]]; then
        mkdir -p "$state_dir/logs"
        audit=(--audit-policy-file="$(audit_policy_file)" --audit-log-path="$state_dir/logs/audit.log"
          --audit-log-format=json --audit-log-maxsize=100 --audit-log-maxbackup=1)
      fi
      start kube-apiserver "$bin/kube-apiserver" \
        --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$apiserver_port" \
        --etcd-servers="http://127.0.0.1:$etcd_client_port" \
        --cert-dir="$pki" --tls-cert-file="$pki/apiserver.crt" --tls-private-key-file="$pki/apiserver.key" \
        --client-ca-file="$pki/ca.crt" \
        --service-account-issuer=https://kubernetes.default.svc.cluster.local \
        --service-account-key-file="$pki/sa.pub" --service-account-signing-key-file="$pki/sa.key" \
        --service-cluster-ip-range=10.96.0.0/16 \
        --authorization-mode=RBAC --anonymous-auth=false \
        --allow-privileged=true --endpoint-reconciler-type=none --profiling=false \
        --max-requests-inflight=800 --max-mutating-requests-inflight=400 \
        --event-ttl=1h \
        --kubelet-preferred-address-types=InternalIP --kubelet-certificate-authority="$pki/ca.crt" \
        "${audit[@]}"
      ;;
    kube-controller-manager)
      start kube-controller-manager "$bin/kube-controller-manager" \
        --kubeconfig="$state_dir/controller-manager.kubeconfig" \
        --authentication-kubeconfig="$state_dir/controller-manager.kubeconfig" \
        --authorization-kubeconfig="$state_dir/controller-manager.kubeconfig" \
        --bind-address=127.0.0.1 --secure-port="$kcm_port" --leader-elect=false \
        --use-service-account-credentials=true \
        --service-account-private-key-file="$pki/sa.key" --root-ca-file="$pki/ca.crt" \
        --cluster-signing-cert-file="$pki/ca.crt" --cluster-signing-key-file="$pki/ca.key" \
        --kube-api-qps=200 --kube-api-burst=400 --concurrent-deployment-syncs=10 \
        --concurrent-replicaset-syncs=10 --concurrent-gc-syncs=40 \
        --profiling=false
      ;;
    kube-scheduler)
      start kube-scheduler "$bin/kube-scheduler" \
        --kubeconfig="$state_dir/scheduler.kubeconfig" \
        --authentication-kubeconfig="$state_dir/scheduler.kubeconfig" \
        --authorization-kubeconfig="$state_dir/scheduler.kubeconfig" \
        --bind-address=127.0.0.1 --secure-port="$scheduler_port" --leader-elect=false \
        --kube-api-qps=200 --kube-api-burst=400 --profiling=false
      ;;
    kwok)
      # kwok's nodes report 127.0.0.1 and the port of its kubelet-facing server,
      # which serves TLS with a certificate from the local CA. There kwok runs exec'd
      # commands as local processes (kwok-exec.yaml), in exec/<namespace>/<pod>/.
      # kwok gets an environment of its own, not whatever the caller of this script
      # had (HOME is the state directory, so no ~/.kwok/kwok.yaml is read either).
      # It runs from its component folder rather than the shared bin/ link, which a
      # checkout with another kwok build (without the patch) may point elsewhere.
      local exec_root=$state_dir/exec exec_config
      mkdir -p "$exec_root"
      exec_config=$(<"$modules_dir/kwok-exec.yaml")
      printf '%s\n' "${exec_config//@EXEC_ROOT@/$exec_root}" > "$state_dir/kwok-exec.yaml"
      start kwok env -i PATH="$PATH" LANG=C.UTF-8 HOME="$state_dir" \
        "$(component_dir kwok)/kwok" --kubeconfig="$state_dir/kwok.kubeconfig" \
        --config="$modules_dir/kwok-stages.yaml" --config="$modules_dir/kwok-snapshot-stages.yaml" \
        --config="$state_dir/kwok-exec.yaml" \
        --manage-all-nodes=false --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake \
        --cidr=10.244.0.0/16 --node-ip=127.0.0.1 --node-port="$kwok_port" --node-lease-duration-seconds=40 \
        --server-address="127.0.0.1:$kwok_port" \
        --tls-cert-file="$pki/kwok-serving.crt" --tls-private-key-file="$pki/kwok-serving.key"
      ;;
    *) die "unknown component $1 (one of: ${STOP_ORDER[*]})" ;;
  esac
}

# wait_component NAME: waits until a started component answers its health check.
wait_component() {
  case $1 in
    etcd) wait_for etcd 60 healthy etcd "http://127.0.0.1:$etcd_client_port/health" '"health":"true"' ;;
    kube-apiserver) wait_for kube-apiserver 120 apiserver_ready ;;
    kube-controller-manager)
      wait_for kube-controller-manager 60 healthy kube-controller-manager "https://127.0.0.1:$kcm_port/healthz" ;;
    kube-scheduler) wait_for kube-scheduler 60 healthy kube-scheduler "https://127.0.0.1:$scheduler_port/healthz" ;;
    kwok) wait_for kwok 60 healthy kwok "http://127.0.0.1:$kwok_port/healthz" ;;
    *) die "unknown component $1 (one of: ${STOP_ORDER[*]})" ;;
  esac
}

cmd_up() {
  local started=$SECONDS
  cmd_build
  local bin; bin=$(bin_dir)
  mkdir -p "$state_dir"
  gen_certs
  gen_kwok_serving_cert
  write_kubeconfig "$state_dir/kubeconfig" admin
  write_kubeconfig "$state_dir/controller-manager.kubeconfig" controller-manager
  write_kubeconfig "$state_dir/scheduler.kubeconfig" scheduler
  write_kubeconfig "$state_dir/kwok.kubeconfig" kwok
  if [[ ${CTRLPLANE_AUDIT_LOG:-} == 1 ]]; then
    printf '%s\n' "$AUDIT_POLICY" > "$(audit_policy_file)"
    log "audit log of write requests: $state_dir/logs/audit.log"
  else
    rm -f "$(audit_policy_file)"
  fi

  start_component etcd
  wait_component etcd
  start_component kube-apiserver
  wait_component kube-apiserver
  start_component kube-controller-manager
  start_component kube-scheduler

  local kubectl=("$bin/kubectl" --kubeconfig="$state_dir/kubeconfig")
  # kwok plays the snapshot controller too (kwok-snapshot-stages.yaml), so the
  # VolumeSnapshot CRDs must be served, in discovery and OpenAPI, before it starts.
  local crd crd_files=() crd_names=()
  for crd in "${SNAPSHOT_CRDS[@]}"; do
    crd_files+=(-f "$(component_dir snapshot-crds)/snapshot.storage.k8s.io_$crd.yaml")
    crd_names+=("crd/$crd.snapshot.storage.k8s.io")
  done
  "${kubectl[@]}" apply --server-side --field-manager=ctrlplane-controlplane "${crd_files[@]}" >/dev/null
  "${kubectl[@]}" wait --for=condition=Established "${crd_names[@]}" --timeout=60s >/dev/null
  wait_for "the VolumeSnapshot API" 60 snapshot_api_served "${kubectl[@]}"

  start_component kwok
  wait_component kube-controller-manager
  wait_component kube-scheduler
  wait_component kwok

  "${kubectl[@]}" apply --server-side --field-manager=ctrlplane-controlplane \
    -f "$modules_dir/nodes.yaml" -f "$modules_dir/storage.yaml" >/dev/null
  "${kubectl[@]}" wait --for=condition=Ready node -l type=kwok --timeout=60s >/dev/null
  readdress_nodes "${kubectl[@]}"
  # Pods need their namespace's `default` ServiceAccount, which the controller
  # manager creates; waiting for it means the controllers are really working.
  wait_for "the default ServiceAccount" 60 "${kubectl[@]}" get serviceaccount default -n default
  log "ready in $((SECONDS - started))s: export KUBECONFIG=$state_dir/kubeconfig"
}

# snapshot_api_served KUBECTL...: the VolumeSnapshot resources are in discovery
# and in the OpenAPI v3 document (kwok needs both to patch their status).
snapshot_api_served() {
  "$@" get --raw /apis/snapshot.storage.k8s.io/v1 | grep -q '"name":"volumesnapshots"' \
    && "$@" get --raw /openapi/v3/apis/snapshot.storage.k8s.io/v1 | grep -q '/volumesnapshots/{name}'
}

# readdress_nodes KUBECTL...: kwok writes a node's address and kubelet port
# when it initialises the node, and keeps them on later heartbeats. A node from
# a state directory of an older version of this script, or of other ports,
# keeps what it had until then (an older version had 10.240.0.1), so correct it
# now: nothing must ever dial anything but this kwok on 127.0.0.1.
readdress_nodes() {
  local node endpoint patch
  patch='{"status":{"addresses":[{"type":"InternalIP","address":"127.0.0.1"}],'
  patch+='"daemonEndpoints":{"kubeletEndpoint":{"Port":'$kwok_port'}}}}'
  "$@" get nodes -l type=kwok -o jsonpath='{range .items[*]}{.metadata.name} {.status.addresses[?(@.type=="InternalIP")].address}:{.status.daemonEndpoints.kubeletEndpoint.Port}{"\n"}{end}' \
    | while read -r node endpoint; do
        if [[ $endpoint != "127.0.0.1:$kwok_port" ]]; then
          log "node $node reported $endpoint; setting 127.0.0.1:$kwok_port"
          "$@" patch node "$node" --subresource=status --type=merge -p "$patch" >/dev/null
        fi
      done
}

readonly STOP_ORDER=(kwok kube-scheduler kube-controller-manager kube-apiserver etcd)

# stop_all NAME...: SIGTERM to each, wait for all (SIGKILL after 20s). Each runs
# in a session and process group of its own (see start), and the whole group
# goes: for kwok that includes the commands exec'd into pods, such as one left
# running in the background.
stop_all() {
  local name pid pids=() names=()
  for name in "$@"; do
    if is_running "$name"; then
      pid=$(cat "$(pid_file "$name")")
      kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
      # A paused (SIGSTOP) process acts on SIGTERM only once it runs again.
      kill -CONT -- "-$pid" 2>/dev/null || kill -CONT "$pid" 2>/dev/null || true
      pids+=("$pid"); names+=("$name")
    fi
    rm -f "$(pid_file "$name")"
  done
  local deadline=$((SECONDS + 20)) i
  for i in "${!pids[@]}"; do
    while kill -0 "${pids[$i]}" 2>/dev/null && (( SECONDS < deadline )); do sleep 0.1; done
    if kill -0 "${pids[$i]}" 2>/dev/null; then
      log "${names[$i]} did not stop on SIGTERM; killing it"
      kill -KILL "${pids[$i]}" 2>/dev/null || true
      while kill -0 "${pids[$i]}" 2>/dev/null; do sleep 0.1; done
    fi
    kill -KILL -- "-${pids[$i]}" 2>/dev/null || true
  done
}

cmd_down() {
  # Clients first (together), then the API server, then its storage.
  stop_all kwok kube-scheduler kube-controller-manager
  stop_all kube-apiserver
  stop_all etcd
  log "stopped"
  if [[ ${1:-} == --purge ]]; then
    rm -rf "$state_dir"
    log "removed $state_dir"
  fi
}

# is_paused NAME: the process is stopped by a signal (state T in /proc).
is_paused() {
  local pid; pid=$(cat "$(pid_file "$1")")
  [[ $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) == T ]]
}

cmd_status() {
  local name any=1
  for name in "${STOP_ORDER[@]}"; do
    if is_running "$name"; then
      if is_paused "$name"; then echo "$name: paused (pid $(cat "$(pid_file "$name")"))"
      else echo "$name: running (pid $(cat "$(pid_file "$name")"))"; fi
      any=0
    else echo "$name: stopped"; fi
  done
  return $any
}

# component NAME: checks that NAME is one of ours.
component() {
  local name
  for name in "${STOP_ORDER[@]}"; do [[ $1 == "$name" ]] && return; done
  die "unknown component '${1:-}' (one of: ${STOP_ORDER[*]})"
}

# One component at a time: the state directory (certificates, kubeconfigs,
# data) must be there from an earlier `up`.
cmd_stop() {
  component "$1"
  stop_all "$1"
  log "$1 stopped"
}

cmd_start() {
  component "$1"
  [[ -f $state_dir/pki/.complete ]] || die "no control plane state in $state_dir: run \`up\` first"
  start_component "$1"
  wait_component "$1"
  log "$1 started (pid $(cat "$(pid_file "$1")"))"
}

# pause/continue signal the process group: for kwok, the commands exec'd into
# pods too.
cmd_signal() {
  local signal=$1 name=$2
  component "$name"
  is_running "$name" || die "$name is not running"
  kill "-$signal" -- "-$(cat "$(pid_file "$name")")"
  log "$name: SIG$signal"
}

cmd_env() {
  # The state directory and ports too, so that `hack/controlplane.sh` run
  # later from this environment (a chaos test restarting a component) acts on
  # this control plane.
  echo "export CTRLPLANE_STATE_DIR=$state_dir CTRLPLANE_PORT_BASE=$port_base"
  echo "export KUBECONFIG=$state_dir/kubeconfig"
  echo "export PATH=$(bin_dir):\$PATH"
}

case ${1:-} in
  build) cmd_build ;;
  up) cmd_up ;;
  down) shift; cmd_down "$@" ;;
  status) cmd_status ;;
  stop) cmd_stop "${2:-}" ;;
  start) cmd_start "${2:-}" ;;
  restart) cmd_stop "${2:-}"; cmd_start "${2:-}" ;;
  pause) cmd_signal STOP "${2:-}" ;;
  continue) cmd_signal CONT "${2:-}" ;;
  env) cmd_env ;;
  bin-dir) bin_dir ;;
  *) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
