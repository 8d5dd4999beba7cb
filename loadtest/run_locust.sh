#!/usr/bin/env bash
# Started by `make locust`: the demo's setup (examples/demo.sh: echo-v1 on :3001, echo-v2 on
# :3002, gatewayd on examples/ with the Gateway on :8080 and admin on :9901) in the
# background, then locust headless against it; every background process is stopped on exit.
# Options through the environment: USERS (20), SPAWN_RATE (10), RUN_TIME (20s),
# LOCUST_TIMEOUT (600, seconds), GATEWAYD_HTTPS_URL (the HTTPS users' URL or off, see loadtest/locustfile.py).
set -euo pipefail
BIN=${BIN:-.venv/bin}
cd "$(dirname "$0")/.."
USERS=${USERS:-20}
SPAWN_RATE=${SPAWN_RATE:-10}
RUN_TIME=${RUN_TIME:-20s}

work=$(mktemp -d -t gatewayd-locust-XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The demo's ports are fixed by examples/: refuse to start next to a running `make demo`.
for port in 3001 3002 8080 8443 9901; do
  if "$BIN/python" -c "import socket,sys; s=socket.socket(); sys.exit(s.connect_ex(('127.0.0.1',$port))!=0)"; then
    echo "run_locust: 127.0.0.1:$port is already in use (is \`make demo\` running?)" >&2
    exit 1
  fi
done

"$BIN/gatewayd" echo --listen 127.0.0.1:3001 --name echo-v1 --namespace demo >"$work/echo-v1.log" 2>&1 & pids+=($!)
"$BIN/gatewayd" echo --listen 127.0.0.1:3002 --name echo-v2 --namespace demo >"$work/echo-v2.log" 2>&1 & pids+=($!)
# Access log off: the run measures the proxy, not the writing of 20 users' log lines.
"$BIN/gatewayd" run --config examples/ --admin-address 127.0.0.1:9901 --access-log off \
  >"$work/gatewayd.log" 2>&1 & pids+=($!)

# Wait (bounded: 30 s) for gatewayd's /ready and both echo backends.
if ! "$BIN/python" - <<'PY'
import socket, sys, time, urllib.request
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
deadline = time.monotonic() + 30
while time.monotonic() < deadline:
    try:
        ready = opener.open("http://127.0.0.1:9901/ready", timeout=1).status == 200
        backends = all(socket.create_connection(("127.0.0.1", p), 1).close() is None
                       for p in (3001, 3002))
        if ready and backends:
            sys.exit(0)
    except OSError:
        pass
    time.sleep(0.1)
sys.exit(1)
PY
then
  echo "run_locust: gatewayd or the echo backends did not become ready in 30 s" >&2
  tail -n 20 "$work"/*.log >&2
  exit 1
fi

echo "locust: $USERS users (spawn rate $SPAWN_RATE/s) for $RUN_TIME against http://127.0.0.1:8080"
status=0
# locust stops itself after RUN_TIME; the timeout only bounds a hang (LOCUST_TIMEOUT, 600 s).
timeout -k 10 "${LOCUST_TIMEOUT:-600}" "$BIN/locust" -f loadtest/locustfile.py --headless -u "$USERS" -r "$SPAWN_RATE" -t "$RUN_TIME" \
  --host http://127.0.0.1:8080 --only-summary || status=$?

if [ "$status" -ne 0 ]; then
  echo "locust: FAILED (exit $status): see the failures and the canary line above" >&2
  tail -n 5 "$work/gatewayd.log" >&2 || true
else
  echo "locust: OK"
fi
exit "$status"
