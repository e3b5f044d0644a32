# Helpers shared by the interop scripts (sourced; each script defines fail).

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
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
