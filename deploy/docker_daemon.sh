#!/usr/bin/env bash
# Make a Docker engine answer on this machine (CI and hosts without systemd).
#
#   deploy/docker_daemon.sh            # exit 0 once `docker info` works, else 1 with the reason
#
# When `docker info` already works it does nothing. Otherwise, as root: installs Debian's
# docker.io and docker-compose (apt) when dockerd is missing, then starts containerd and dockerd
# in the background at the lowest CPU priority, logging to $FEDSEG_DOCKER_LOG_DIR (default
# /tmp/fedseg-docker). It records the ids of what it started in that folder (containerd.pid,
# dockerd.pid), so `deploy/docker_daemon.sh --stop` stops exactly those and nothing else.
set -uo pipefail

LOG_DIR="${FEDSEG_DOCKER_LOG_DIR:-/tmp/fedseg-docker}"
mkdir -p "$LOG_DIR"
say() { echo "docker_daemon.sh: $*" >&2; }

stop_started() {
  for name in dockerd containerd; do
    pidfile="$LOG_DIR/$name.pid"
    [ -f "$pidfile" ] || continue
    pid="$(cat "$pidfile")"
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid"
      for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    fi
    rm -f "$pidfile"
  done
}

if [ "${1:-}" = "--stop" ]; then
  stop_started
  exit 0
fi

if docker info >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  say "docker does not answer and this is not root: cannot start an engine"
  exit 1
fi

if ! command -v dockerd >/dev/null 2>&1 || ! command -v docker-compose >/dev/null 2>&1; then
  if ! command -v apt-get >/dev/null 2>&1; then
    say "dockerd is missing and there is no apt-get to install docker.io"
    exit 1
  fi
  say "installing docker.io and docker-compose (apt)"
  export DEBIAN_FRONTEND=noninteractive
  # Another apt run may hold the lock for a while (other jobs on the machine): wait for it.
  if ! timeout 600 bash -c 'until apt-get install -y -qq -o DPkg::Lock::Timeout=300 docker.io docker-compose >"$0/apt.log" 2>&1 \
      || { apt-get update -qq -o DPkg::Lock::Timeout=300 >>"$0/apt.log" 2>&1 \
           && apt-get install -y -qq -o DPkg::Lock::Timeout=300 docker.io docker-compose >>"$0/apt.log" 2>&1; }; do exit 1; done' "$LOG_DIR"; then
    tail -5 "$LOG_DIR/apt.log" >&2
    say "apt-get could not install docker.io"
    exit 1
  fi
fi

if ! pgrep -x containerd >/dev/null 2>&1; then
  nohup nice -n 19 containerd >"$LOG_DIR/containerd.log" 2>&1 &
  echo $! >"$LOG_DIR/containerd.pid"
  for _ in $(seq 1 30); do [ -S /run/containerd/containerd.sock ] && break; sleep 1; done
fi
if ! pgrep -x dockerd >/dev/null 2>&1; then
  nohup nice -n 19 dockerd --containerd=/run/containerd/containerd.sock >"$LOG_DIR/dockerd.log" 2>&1 &
  echo $! >"$LOG_DIR/dockerd.pid"
fi
for _ in $(seq 1 60); do
  if docker info >/dev/null 2>&1; then
    say "engine up ($(docker version --format '{{.Server.Version}}' 2>/dev/null))"
    exit 0
  fi
  sleep 1
done
say "dockerd did not answer within 60 s; last lines of its log:"
tail -15 "$LOG_DIR/dockerd.log" >&2 || true
exit 1
