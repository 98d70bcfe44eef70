#!/usr/bin/env bash
# Builds the container image of ctrlplane-operator as an OCI image layout, with
# no Docker daemon and no base image: a static binary, the machine's CA bundle,
# /etc/passwd and /etc/group with the non-root user 65532 ("nonroot"), packed
# into one layer by tar and umoci (Debian: apt-get install umoci).
#
#   hack/image.sh                    build target/image/oci:<version> (prints the reference)
#   hack/image.sh binary             only build the static binary (prints its path)
#   hack/image.sh rootfs BIN CA DIR  lay out the root filesystem in DIR from a binary and
#                                    a CA bundle; the Dockerfile uses this too, so both
#                                    builds produce the same files
#
# Environment: IMAGE_DIR (the OCI layout, default target/image/oci), SOURCE_DATE_EPOCH
# (every timestamp in the image; default: the time of the last commit).
#
# The binary is built with glibc, statically (crt-static), into target/image/cargo, apart
# from the ordinary debug build; cargo skips it when nothing changed. The image is
# reproducible for a given binary: same epoch and same inputs give the same digests.
set -euo pipefail
repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# The image's contract. The Dockerfile repeats these (a Dockerfile cannot read them from
# here) and tests/image.rs checks that both agree.
binary_path=/usr/local/bin/ctrlplane-operator
ca_path=/etc/ssl/certs/ca-certificates.crt
uid=65532
gid=65532
user_name=nonroot
home=/home/nonroot
source_url=https://github.com/ctrlplane/ctrlplane-operator
cmd=(run --metrics-address=0.0.0.0:8080 --log-format=json)
env_path=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
rust_target=x86_64-unknown-linux-gnu

die() { echo "hack/image.sh: $*" >&2; exit 1; }

# rootfs BIN CA DIR: the whole root filesystem, nothing else. Owners are root except the
# home directory; when not run as root the owners are applied by the packer (tar) instead.
rootfs() {
  local bin=$1 ca=$2 dir=$3
  [[ -f $bin ]] || die "no binary at $bin"
  [[ -s $ca ]] || die "no CA bundle at $ca (Debian: apt-get install ca-certificates)"
  rm -rf "$dir"
  mkdir -p "$dir"
  (
    cd "$dir"
    umask 022
    mkdir -p ".${binary_path%/*}" ".${ca_path%/*}" tmp ".$home"
    install -m 0755 "$bin" ".$binary_path"
    install -m 0644 "$ca" ".$ca_path"
    cat > etc/passwd <<EOF
root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
$user_name:x:$uid:$gid:$user_name:$home:/sbin/nologin
EOF
    cat > etc/group <<EOF
root:x:0:
nobody:x:65534:
$user_name:x:$gid:
EOF
    # Look names up in /etc/hosts first, then DNS. Both lookups are inside libc in the
    # glibc this is built with (Debian 12: 2.36), so the static binary loads no NSS module.
    cat > etc/nsswitch.conf <<'EOF'
passwd: files
group: files
hosts: files dns
EOF
    chmod 0644 etc/passwd etc/group etc/nsswitch.conf
    find . -type d -exec chmod 0755 {} +
    chmod 1777 tmp
    chmod 0700 ".$home"
    if [[ $(id -u) -eq 0 ]]; then
      chown -R 0:0 .
      chown "$uid:$gid" ".$home"
    fi
  )
}

# The static binary, built (or reused) by cargo in a target directory of its own.
binary() {
  cd "$repo_root"
  # Only this build's flags: nothing from the caller (cargo test sets none, but a
  # developer's environment might) that would change or invalidate the build.
  unset CARGO_ENCODED_RUSTFLAGS CARGO_BUILD_RUSTFLAGS CARGO_BUILD_TARGET
  RUSTFLAGS="-C target-feature=+crt-static" \
    CARGO_PROFILE_RELEASE_STRIP=symbols \
    CARGO_TARGET_DIR="$repo_root/target/image/cargo" \
    "${CARGO:-cargo}" build --release --locked --target "$rust_target" \
    --bin ctrlplane-operator >&2
  local out=$repo_root/target/image/cargo/$rust_target/release/ctrlplane-operator
  # Static: no program interpreter and no shared library needed.
  if ldd "$out" >/dev/null 2>&1 && ! ldd "$out" 2>&1 | grep -q 'statically linked'; then
    die "$out is dynamically linked: $(ldd "$out" 2>&1 | tr '\n' ' ')"
  fi
  echo "$out"
}

version() {
  sed -n '/^\[package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' "$repo_root/Cargo.toml" | head -n 1
}

image() {
  command -v umoci >/dev/null || die "umoci is required (Debian: apt-get install umoci)"
  command -v tar >/dev/null || die "tar is required"
  local bin tag oci work epoch created
  bin=$(binary)
  tag=$(version)
  [[ -n $tag ]] || die "no version in Cargo.toml"
  oci=${IMAGE_DIR:-$repo_root/target/image/oci}
  work=$repo_root/target/image/work
  epoch=${SOURCE_DATE_EPOCH:-$(git -C "$repo_root" log -1 --format=%ct 2>/dev/null || echo 0)}
  created=$(date -u -d "@$epoch" +%Y-%m-%dT%H:%M:%SZ)

  rootfs "$bin" "$ca_path" "$work/rootfs"
  # One layer, written by tar so that order, owners, modes and times are fixed: names
  # sorted, every time the epoch, numeric owners (root, and 65532 for the home directory).
  local tar_opts=(--format=ustar --no-recursion --numeric-owner --mtime="@$epoch" -C "$work/rootfs")
  local entries
  mapfile -t entries < <(cd "$work/rootfs" && find . -mindepth 1 ! -path ".$home" | sed 's|^\./||' | LC_ALL=C sort)
  rm -f "$work/layer.tar"
  tar --create --file "$work/layer.tar" "${tar_opts[@]}" --owner=0 --group=0 "${entries[@]}"
  tar --append --file "$work/layer.tar" "${tar_opts[@]}" --owner="$uid" --group="$gid" "${home#/}"

  rm -rf "$oci"
  mkdir -p "$(dirname "$oci")"
  umoci init --layout "$oci"
  umoci new --image "$oci:$tag"
  umoci raw add-layer --image "$oci:$tag" \
    --history.created "$created" --history.created_by "hack/image.sh" \
    --history.comment "ctrlplane-operator $tag: static binary, CA bundle, user $user_name" \
    "$work/layer.tar"
  local labels=(
    "org.opencontainers.image.source=$source_url"
    "org.opencontainers.image.version=$tag"
    "org.opencontainers.image.title=ctrlplane-operator"
    "org.opencontainers.image.licenses=Apache-2.0"
  )
  local config=(
    --created "$created" --os linux --architecture amd64 --no-history
    --config.user "$uid:$gid" --config.workingdir /
    --config.entrypoint "$binary_path"
    --config.env "PATH=$env_path" --config.env "SSL_CERT_FILE=$ca_path"
    --config.exposedports 8080/tcp
  )
  local c l
  for c in "${cmd[@]}"; do config+=("--config.cmd=$c"); done
  for l in "${labels[@]}"; do config+=(--config.label "$l" --manifest.annotation "$l"); done
  umoci config --image "$oci:$tag" "${config[@]}"
  umoci gc --layout "$oci"
  echo "$oci:$tag"
}

case ${1:-image} in
  image) image ;;
  binary) binary ;;
  rootfs)
    (($# == 4)) || die "usage: hack/image.sh rootfs BINARY CA_BUNDLE DIR"
    rootfs "$2" "$3" "$4"
    ;;
  version) version ;;
  *) die "unknown command $1 (image, binary, rootfs, version)" ;;
esac
