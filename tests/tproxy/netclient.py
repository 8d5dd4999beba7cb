"""A client run inside a test network namespace (``ip netns exec NS python netclient.py``).

Modes (one JSON document on stdout):

- ``http URL [--count N] [--host HOST]``: N GETs over one keep-alive connection; each
  record has the status, the response headers (lower-case names), the echo backend's
  ``pod`` and the X-Forwarded-For it received.
- ``tcp HOST PORT [--send TEXT]``: connect, send TEXT, half-close, read to EOF; the text
  read back.

Standard library only; every socket operation has a timeout.
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import sys
import urllib.parse

TIMEOUT = 5.0


def http_mode(url: str, count: int, host: str | None) -> list[dict[str, object]]:
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port or 80, timeout=TIMEOUT)
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    out: list[dict[str, object]] = []
    try:
        for _ in range(count):
            headers = {"Host": host} if host else {}
            try:
                conn.request("GET", target, headers=headers)
                resp = conn.getresponse()
                body = resp.read()
            except (OSError, http.client.HTTPException) as exc:
                out.append({"error": f"{type(exc).__name__}: {exc}"})
                conn.close()
                continue
            record: dict[str, object] = {
                "status": resp.status,
                "headers": {k.lower(): v for k, v in resp.getheaders()},
            }
            try:
                doc = json.loads(body)
            except ValueError:
                doc = None
            if isinstance(doc, dict):
                record["pod"] = doc.get("pod")
                sent = doc.get("headers") or {}
                record["xff"] = (sent.get("X-Forwarded-For") or [None])[0]
            else:
                record["body"] = body[:200].decode("latin-1")
            out.append(record)
    finally:
        conn.close()
    return out


def tcp_mode(host: str, port: int, send: str) -> dict[str, object]:
    try:
        with socket.create_connection((host, port), timeout=TIMEOUT) as sock:
            sock.sendall(send.encode())
            sock.shutdown(socket.SHUT_WR)
            chunks = []
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                chunks.append(data)
    except OSError as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    return {"text": b"".join(chunks).decode("latin-1")}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="mode", required=True)
    h = sub.add_parser("http")
    h.add_argument("url")
    h.add_argument("--count", type=int, default=1)
    h.add_argument("--host", default=None)
    t = sub.add_parser("tcp")
    t.add_argument("host")
    t.add_argument("port", type=int)
    t.add_argument("--send", default="")
    args = parser.parse_args(argv)
    if args.mode == "http":
        result: object = http_mode(args.url, min(args.count, 5000), args.host)
    else:
        result = tcp_mode(args.host, args.port, args.send)
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
