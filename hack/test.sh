#!/usr/bin/env bash
# The test command: builds (or reuses) the pinned control plane, starts a fresh
# one of its own, runs the lints and every test against it, and stops it again,
# whether the tests pass or not.
#
#   hack/test.sh                 everything
#   hack/test.sh foundation      only tests whose name contains "foundation"
#                                (any arguments go to `cargo test` after `--`)
#   hack/test.sh chaos           only the chaos tests
#
# It uses its own state directory and ports, so it does not disturb a control
# plane that hack/run.sh or hack/controlplane.sh started.
#
# The chaos tests (tests/chaos.rs) restart the API server, freeze etcd and
# read the API server's audit log, so they never share a control plane with
# other tests: a plain `cargo test` skips them (#[ignore]), and after the other
# tests this script stops their control plane and runs the chaos tests one at
# a time on a fresh one of their own (state in <state dir>-chaos, the same
# ports, the audit log on). CTRLPLANE_TEST_CHAOS=0 leaves them out.
set -euo pipefail
repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo_root"

export CTRLPLANE_STATE_DIR=${CTRLPLANE_TEST_STATE_DIR:-$repo_root/.controlplane-test}
export CTRLPLANE_PORT_BASE=${CTRLPLANE_TEST_PORT_BASE:-16540}
# End-to-end tests mostly wait on the API server, so more of them run at once
# than there are cores.
export RUST_TEST_THREADS=${RUST_TEST_THREADS:-6}

# tests/image.rs builds and unpacks the image with umoci; say so now, not after the run.
if (($# == 0)) && ! command -v umoci >/dev/null; then
  echo "umoci is required for tests/image.rs (Debian: apt-get install umoci; .ci/run installs it)" >&2
  exit 1
fi

started=$SECONDS
step() { printf '\n==> %s (%ss)\n' "$*" "$((SECONDS - started))"; }

step "building the control plane (cached after the first run)"
hack/controlplane.sh build

step "building kstatus for the GitOps tests (cached after the first run)"
CTRLPLANE_KSTATUS=$(hack/kstatus/build.sh)
export CTRLPLANE_KSTATUS

step "building the operator and its tests"
cargo build --all-targets --locked

if (($# == 0)); then
  # tests/image.rs would build it too; here its time shows as a step of its own
  # (a static release build: minutes cold, a second when nothing changed).
  step "building the image (hack/image.sh)"
  hack/image.sh
fi

step "lint: cargo fmt --check and cargo clippy"
cargo fmt --check
cargo clippy --all-targets --locked -- -D warnings

# What the arguments select: the chaos tests (ignored unless asked for), and
# the others (every test binary lists the chaos tests too, ignored or not).
count_tests() { { cargo test --locked "$@" 2>/dev/null || true; } | grep -c ': test$' || true; }
chaos_tests=0
if [[ ${CTRLPLANE_TEST_CHAOS:-1} != 0 ]]; then
  chaos_tests=$(count_tests --test chaos -- --list --ignored "$@")
fi
other_tests=$(( $(count_tests -- --list "$@") - $(count_tests --test chaos -- --list "$@") ))
failed=()

trap 'step "stopping the control plane"; hack/controlplane.sh down' EXIT
if ((other_tests > 0)); then
  step "starting a fresh control plane"
  hack/controlplane.sh down --purge >/dev/null 2>&1 || true
  hack/controlplane.sh up
  eval "$(hack/controlplane.sh env)"

  step "running the tests"
  cargo test --locked --no-fail-fast -- "$@" || failed+=(tests)
  hack/controlplane.sh down
fi

if ((chaos_tests > 0)); then
  step "starting a fresh control plane for the chaos tests (the API server's audit log on)"
  export CTRLPLANE_STATE_DIR=${CTRLPLANE_TEST_CHAOS_STATE_DIR:-$CTRLPLANE_STATE_DIR-chaos}
  hack/controlplane.sh down --purge >/dev/null 2>&1 || true
  CTRLPLANE_AUDIT_LOG=1 hack/controlplane.sh up
  eval "$(hack/controlplane.sh env)"

  step "running the chaos tests, one at a time (each prints how long recovery took)"
  cargo test --locked --no-fail-fast --test chaos -- --ignored --test-threads=1 --nocapture "$@" \
    || failed+=("chaos tests")
fi

if ((${#failed[@]})); then
  step "failed: ${failed[*]}"
  exit 1
fi
step "all tests passed"
