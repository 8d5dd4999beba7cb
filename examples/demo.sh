#!/usr/bin/env bash
# Started by `make demo`: two echo backends, then gatewayd on examples/ in the foreground.
set -euo pipefail
BIN=${BIN:-.venv/bin}
cd "$(dirname "$0")/.."
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT INT TERM
"$BIN/gatewayd" echo --listen 127.0.0.1:3001 --name echo-v1 --namespace demo & pids+=($!)
"$BIN/gatewayd" echo --listen 127.0.0.1:3002 --name echo-v2 --namespace demo & pids+=($!)
cat <<'TXT'

gatewayd demo: Gateway demo/edge on 127.0.0.1:8080 (HTTP) and 127.0.0.1:8443 (HTTPS),
admin on 127.0.0.1:9901
Try, in another terminal:
  curl -s http://127.0.0.1:8080/echo                       # 90% echo-v1, 10% echo-v2 ("pod")
  curl -s -H 'X-Canary: true' http://127.0.0.1:8080/echo   # always echo-v2
  curl -si http://127.0.0.1:8080/old/page                  # 301 to /new/page
  curl -s http://127.0.0.1:8080/headers                    # x-demo header added, user-agent removed
  curl -s http://127.0.0.1:8080/nowhere -o /dev/null -w '%{http_code}\n'   # 404
  curl -sk https://localhost:8443/echo                     # over TLS (self-signed: -k)
  curl -sik -L http://127.0.0.1:8080/secure                # 301 to https://127.0.0.1:8443/secure
  curl -s http://127.0.0.1:9901/status | python3 -m json.tool
  curl -s http://127.0.0.1:9901/stats/prometheus | grep gatewayd_downstream
  .venv/bin/gatewayd status all
Ctrl-C stops gatewayd and the backends. gatewayd's log below names each listener and
the address to use ("listening: gateway demo/edge listener http HTTP on http://...").

TXT
"$BIN/gatewayd" run --config examples/ --admin-address 127.0.0.1:9901
