#!/usr/bin/env bash
# Builds the image rsgi-wasm:local FROM scratch out of the binary already
# built here (`make bin`) and the shared libraries `ldd` lists for it, for
# machines that cannot pull base images. The Dockerfile is the reproducible
# way; this image carries the host's glibc, so build it on the Debian
# release you mean to ship. Needs podman (installed with apt if missing);
# ENGINE=docker works too. Then runs `rsgi-wasm --version` in the image
# with a read-only root as a smoke test, with RUN_OPTS added to `run`.
# On a cgroup v1 host crun refuses to start containers and podman's default
# rlimits exceed what a VM like this project's grants, so there the default
# RUN_OPTS is runc (installed with apt if missing) with lower rlimits.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/rsgi-wasm}
IMAGE=${IMAGE:-rsgi-wasm:local}
ENGINE=${ENGINE:-podman}
WORK=target/image-from-scratch
APP_UID=10001

[ -x "$BIN" ] || { echo "error: $BIN not found; build it first (make bin)" >&2; exit 1; }
if ! command -v "$ENGINE" >/dev/null 2>&1; then
  if [ "$ENGINE" = podman ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "installing podman" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman >/dev/null
  else
    echo "error: $ENGINE is required" >&2
    exit 1
  fi
fi

if [ -z "${RUN_OPTS+set}" ]; then
  RUN_OPTS=
  if [ "$ENGINE" = podman ] && [ ! -e /sys/fs/cgroup/cgroup.controllers ]; then
    if ! command -v runc >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq runc >/dev/null
    fi
    RUN_OPTS="--runtime runc --ulimit nofile=1024:1024 --ulimit nproc=4096:4096"
  fi
fi

rm -rf "$WORK"
root=$WORK/root ctx=$WORK/context
mkdir -p "$root" "$ctx"

install -D -m 0755 "$BIN" "$root/usr/local/bin/rsgi-wasm"
# `name => /path (addr)` and the loader's own `/path (addr)`; vdso has no file.
ldd_out=$(ldd "$BIN")
if grep -q 'not found' <<<"$ldd_out"; then
  echo "error: ldd cannot resolve every library of $BIN:" >&2
  echo "$ldd_out" >&2
  exit 1
fi
libs=$(awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' <<<"$ldd_out")
for lib in $libs; do
  # Same path as on the host: the loader's path is baked into the binary.
  install -D -m 0755 "$(readlink -f "$lib")" "$root$lib"
  echo "library: $lib" >&2
done

mkdir -p "$root/etc" "$root/etc/rsgi-wasm" "$root/srv/apps"
printf 'root:x:0:0:root:/root:/usr/sbin/nologin\nrsgi-wasm:x:%s:%s:rsgi-wasm:/nonexistent:/usr/sbin/nologin\n' \
  "$APP_UID" "$APP_UID" >"$root/etc/passwd"
printf 'root:x:0:\nrsgi-wasm:x:%s:\n' "$APP_UID" >"$root/etc/group"
# glibc >= 2.34 has the files and dns modules built in; it still reads this.
printf 'passwd: files\ngroup: files\nhosts: files dns\n' >"$root/etc/nsswitch.conf"
mkdir -m 1777 "$root/tmp"
mkdir -p "$root/var/cache"
# The binary refuses a cache dir it does not own or that others may write.
mkdir -m 0700 "$root/var/cache/rsgi-wasm"

# Ownership is set in the tar, so no root or user namespace is needed.
tar -C "$root" --numeric-owner --owner=0 --group=0 \
  --exclude=./var/cache/rsgi-wasm -cf "$ctx/rootfs.tar" .
tar -C "$root" --numeric-owner --owner="$APP_UID" --group="$APP_UID" \
  -rf "$ctx/rootfs.tar" ./var/cache/rsgi-wasm
rm -rf "$root"

cat >"$ctx/Containerfile" <<EOF
FROM scratch
ADD rootfs.tar /
ENV PATH=/usr/local/bin:/usr/bin:/bin \\
    RSGI_WASM_CACHE=/var/cache/rsgi-wasm \\
    TMPDIR=/tmp
VOLUME ["/var/cache/rsgi-wasm"]
USER $APP_UID:$APP_UID
EXPOSE 8000 9090
ENTRYPOINT ["rsgi-wasm"]
CMD ["serve", "/etc/rsgi-wasm/tenants.toml", "--listen", "0.0.0.0:8000", "--metrics", "0.0.0.0:9090"]
EOF

"$ENGINE" build -t "$IMAGE" -f "$ctx/Containerfile" "$ctx"
rm -f "$ctx/rootfs.tar"

# shellcheck disable=SC2086 # RUN_OPTS is a list of options
version=$("$ENGINE" run --rm --read-only --tmpfs /tmp $RUN_OPTS "$IMAGE" --version)
echo "built $IMAGE: $version" >&2
