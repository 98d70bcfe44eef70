#!/usr/bin/env bash
# The test command: builds (or reuses) the pinned control plane, starts a fresh
# one of its own, runs the lints and every test against it, and stops it again,
# whether the tests pass or not.
#
#   hack/test.sh                 everything
#   hack/test.sh foundation      only tests whose name contains "foundation"
#                                (any arguments go to `cargo test` after `--`)
#
# It uses its own state directory and ports, so it does not disturb a control
# plane that hack/run.sh or hack/controlplane.sh started.
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

step "starting a fresh control plane"
hack/controlplane.sh down --purge >/dev/null 2>&1 || true
trap 'step "stopping the control plane"; hack/controlplane.sh down' EXIT
hack/controlplane.sh up
eval "$(hack/controlplane.sh env)"

step "running the tests"
cargo test --locked --no-fail-fast -- "$@"
step "all tests passed"
