# Helpers shared by the interop scripts (sourced; each script defines fail).

# port VAR: sets VAR to a port nothing is bound to now and that this shell
# never handed out before (the kernel can give two bind(0) calls in a row
# the same port, and two members given one port fight over it).
PORTS_GIVEN=" "
port() {
  local given
  for _ in $(seq 1 100); do
    given=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    if [[ "$PORTS_GIVEN" != *" $given "* ]]; then
      PORTS_GIVEN+="$given "
      printf -v "$1" %s "$given"
      return 0
    fi
  done
  echo "no unused port in 100 tries" >&2; return 1
}
# expect NAME ACTUAL WANTED
expect() { [ "$2" == "$3" ] || fail "$1: got [$2], want [$3]"; echo "ok: $1"; }
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }

# wait_healthy NAME CLIENT_URL PID SECONDS: polls /health every 0.1 s. A
# member that takes the connection but does not answer within 5 s fails at
# once (a reactor that stopped serving), as does one that exits.
wait_healthy() {
  local name=$1 url=$2 pid=$3 rc
  for _ in $(seq 1 $(( $4 * 10 ))); do
    rc=0; curl -sf --max-time 5 "$url/health" >/dev/null 2>&1 || rc=$?
    [ "$rc" = 0 ] && return 0
    [ "$rc" = 28 ] && fail "$name took a connection but did not answer /health within 5s"
    kill -0 "$pid" 2>/dev/null || fail "$name exited during start-up"
    sleep 0.1
  done
  fail "$name not healthy within $4s"
}

# e ENDPOINTS ARGS...: etcdctl with bounded timeouts.
e() { local ep=$1; shift; etcdctl --endpoints="$ep" --command-timeout=10s --dial-timeout=3s "$@"; }

# stop_all: stops the servers a script started (their PIDs in PIDS) and
# removes its WORK directory; scripts run it on exit.
stop_all() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}

# fail_with_logs MESSAGE: reports a failure with the end of every log in
# WORK, and exits.
fail_with_logs() {
  echo "FAIL: $*" >&2
  for log in "$WORK"/*.log; do echo "--- $log ---" >&2; tail -30 "$log" >&2 || true; done
  exit 1
}
