# shellcheck shell=bash
# Shared by scripts/test.sh and scripts/bench*.sh: where cargo puts binaries, building
# the shim and putting it on PATH, a private containerd under a temp dir, and one EXIT
# trap that undoes everything in reverse order. Source it from the repository root:
#   cd "$(dirname "$0")/.." && . scripts/lib.sh

# The cargo target dir as an absolute path (CARGO_TARGET_DIR is honoured, relative or not).
nc_target_dir() {
  local t=${CARGO_TARGET_DIR:-target}
  case $t in /*) echo "$t" ;; *) echo "$PWD/$t" ;; esac
}

# nc_bin PROFILE NAME: the path of a workspace binary built for PROFILE (debug|release).
nc_bin() {
  echo "$(nc_target_dir)/$1/$2"
}

# Cleanups run at exit, last registered first.
_nc_cleanups=()
nc_on_exit() {
  _nc_cleanups=("$*" "${_nc_cleanups[@]}")
}
_nc_run_cleanups() {
  local c
  for c in "${_nc_cleanups[@]}"; do eval "$c" || true; done
}
trap _nc_run_cleanups EXIT

# nc_temp_dir VAR PREFIX: sets VAR to a new temp dir (under $TMPDIR, default /tmp),
# removed at exit. (Not `dir=$(...)`: a subshell could not register the cleanup.)
nc_temp_dir() {
  local d
  d=$(mktemp -d "${TMPDIR:-/tmp}/$2.XXXXXX")
  nc_on_exit "rm -rf '$d'"
  printf -v "$1" '%s' "$d"
}

# nc_build_shim PROFILE: builds containerd-shim-nestcache-v2 for PROFILE (debug, release,
# or shim: what a node runs, as scripts/install-shim.sh installs it) and prints its path.
# Profile shim (Cargo.toml: opt-level s, fat LTO) is linked statically on glibc and not
# as PIE: no ld.so, libc.so or libgcc_s mapped into every long-lived shim and no
# start-up relocation of its tables, only the libc code it calls (the shim uses no NSS
# or dlopen). `cargo rustc` gives those flags to the binary's link alone: set for the
# whole build they would reach build scripts and proc macros, which cannot be static.
nc_build_shim() {
  local profile=$1 flags=()
  case $profile in
  debug) cargo build -p containerd-shim-nestcache >&2 ;;
  release) cargo build --release -p containerd-shim-nestcache >&2 ;;
  *)
    case $(rustc -vV | sed -n 's/^host: //p') in
    *-linux-gnu) flags=(-C target-feature=+crt-static -C relocation-model=static) ;;
    esac
    cargo rustc --profile "$profile" -p containerd-shim-nestcache \
      --bin containerd-shim-nestcache-v2 -- "${flags[@]}" >&2
    ;;
  esac
  nc_bin "$profile" containerd-shim-nestcache-v2
}

# nc_shim_on_path PROFILE DIR: builds containerd-shim-nestcache-v2 for PROFILE and puts
# it first on PATH through DIR/bin, where containerd looks runtime
# io.containerd.nestcache.v2 up.
nc_shim_on_path() {
  local bin
  bin=$(nc_build_shim "$1")
  mkdir -p "$2/bin"
  ln -sf "$bin" "$2/bin/containerd-shim-nestcache-v2"
  export PATH="$2/bin:$PATH"
}

# nc_containerd_start DIR: starts a private containerd under DIR (scripts/containerd.sh),
# stopped at exit; sets and exports CONTAINERD_ADDRESS.
nc_containerd_start() {
  local dir=$1
  CONTAINERD_ADDRESS=$(scripts/containerd.sh start "$dir")
  export CONTAINERD_ADDRESS
  nc_on_exit "scripts/containerd.sh stop '$dir' >/dev/null 2>&1"
}
