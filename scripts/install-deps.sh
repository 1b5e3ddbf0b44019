#!/usr/bin/env bash
# Installs what nestcache builds and tests with, from Debian's packages, when missing.
set -euo pipefail
need=()
for pair in containerd:containerd runc:runc ctr:containerd protoc:protobuf-compiler \
            skopeo:skopeo umoci:umoci busybox:busybox-static pigz:pigz \
            docker-registry:docker-registry openssl:openssl \
            mkfs.ext4:e2fsprogs losetup:mount; do
  bin=${pair%%:*} pkg=${pair#*:}
  command -v "$bin" >/dev/null 2>&1 || [ -x "/usr/sbin/$bin" ] || need+=("$pkg")
done
# Nested networks: the CNI reference plugins (bridge, host-local, portmap, firewall,
# loopback), which run iptables and ip; the UDP test borrows the host's perl.
# The CRI tests (shim/tests/cri.rs) use bridge + host-local and ip too.
[ -x /usr/lib/cni/bridge ] || need+=(containernetworking-plugins)
for pair in iptables:iptables iptables-save:iptables ip:iproute2 perl:perl-base; do
  bin=${pair%%:*} pkg=${pair#*:}
  command -v "$bin" >/dev/null 2>&1 || [ -x "/usr/sbin/$bin" ] || need+=("$pkg")
done
# The node's shim (profile shim, scripts/lib.sh nc_build_shim) links glibc statically.
[ -f "/usr/lib/$(gcc -dumpmachine 2>/dev/null || echo x86_64-linux-gnu)/libc.a" ] || need+=(libc6-dev)
# The registry source's TLS (native-tls) links the system OpenSSL.
{ command -v pkg-config >/dev/null 2>&1 && pkg-config --exists openssl; } || need+=(pkg-config libssl-dev)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# Debian's containerd package may start a system containerd through its service; nestcache
# never needs it and the tests never touch it.
