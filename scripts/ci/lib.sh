# Shared by the scripts in scripts/ci: sourced, not run.

step() { printf '\n==> %s\n' "$*"; }

# apt-get install without starting the packages' services: while the install runs, a
# policy-rc.d that refuses every start is in place (unless the machine has its own already).
apt_install() {
  local policy=/usr/sbin/policy-rc.d ours=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && ours=1
  fi
  local rc=0
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      --no-install-recommends "$@" >/dev/null; } || rc=$?
  if [ "$ours" = 1 ]; then rm -f "$policy"; fi
  return "$rc"
}

# promtool and prometheus, from Debian's prometheus package when missing. On a machine that runs
# systemd the package enables its service: only the binaries are wanted, so where this function
# installed the package it also turns that service off.
ensure_prometheus() {
  if command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; then
    return 0
  fi
  step "installing Debian's prometheus package"
  apt_install prometheus
  if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    systemctl disable --now prometheus.service >/dev/null 2>&1 || true
  fi
}

# python3 with venv, from Debian when missing.
ensure_python() {
  if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
    step "installing python3 and python3-venv"
    apt_install python3 python3-venv
  fi
}

# A TCP port on 127.0.0.1 that nothing listens on right now.
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Wait (at most $2 seconds) for process $1 to exit after SIGTERM, then SIGKILL it.
stop_pid() {
  local pid=$1 budget=${2:-10}
  kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq $((budget * 10))); do
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
