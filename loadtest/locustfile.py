"""Locust scenarios against ``make demo``'s setup (``make locust`` runs them headless).

The demo: Gateway demo/edge on 127.0.0.1:8080 with the routes of ``examples/``, echo-v1
on :3001 and echo-v2 on :3002 (``gatewayd echo``, which answers JSON naming its "pod").

Scenarios (task weights in brackets):

- [3] ``GET /headers``: a plain proxied GET; the RequestHeaderModifier must have added
  ``X-Demo`` and removed ``User-Agent``, the ResponseHeaderModifier set ``X-Served-By``.
- [6] ``GET /echo``: the 90/10 canary; every answer's "pod" is counted, and when the test
  stops the run fails (exit code 1) if echo-v2's share is more than 3 points from 10%.
- [2] ``GET /echo`` with ``X-Canary: true``: must always reach echo-v2.
- [1] ``POST /echo`` with a 64 KiB body: echo-v* must have read all 65,536 bytes.
- HTTPS users (one in five): ``GET /secure/locust`` on the demo's HTTPS listener
  (:8443, TLS terminated by gatewayd with the self-signed demo certificate); the echo
  must have seen ``X-Forwarded-Proto: https``.  ``GATEWAYD_HTTPS_URL`` names another URL
  (the compose file points it at the gatewayd service); ``off`` leaves HTTPS out.

    locust -f loadtest/locustfile.py --headless -u 20 -r 10 -t 20s \\
        --host http://127.0.0.1:8080 --only-summary
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any
from urllib.parse import urlsplit

from locust import FastHttpUser, constant, events, task
from locust.env import Environment

log = logging.getLogger("gatewayd.locust")

CANARY_SHARE = 0.10  # examples/20-routes.yaml: echo-v1 weight 90, echo-v2 weight 10
CANARY_TOLERANCE = 0.03  # the run fails beyond 10% +- 3 points
CANARY_MIN_SAMPLES = 200  # below this the share says nothing: the run fails too
BIG_BODY = bytes(range(256)) * 256  # 64 KiB

# Pods seen by the weighted canary (one locust process, gevent: no lock needed).
canary_pods: dict[str, int] = {}
canary_verdict: list[str] = []
_environment: list[Environment] = []


def _json(resp: Any) -> dict[str, Any] | None:
    """The echo document of a response, or None after marking the request failed."""
    if resp.status_code != 200:
        resp.failure(f"status {resp.status_code}")
        return None
    try:
        doc = json.loads(resp.content)
    except (ValueError, TypeError):
        resp.failure("not a JSON echo document")
        return None
    if not isinstance(doc, dict):
        resp.failure("not a JSON echo document")
        return None
    return doc


class DemoUser(FastHttpUser):
    """One client of the demo Gateway, sending its next request as soon as one is answered
    (closed loop: with 20 users locust's own single core is usually the limit; wrk in
    ``make bench`` is the throughput tool, this is behaviour under concurrent load)."""

    weight = 4
    wait_time = constant(0)

    @task(3)
    def proxied_get(self) -> None:
        with self.client.get("/headers", name="/headers", catch_response=True) as resp:
            doc = _json(resp)
            if doc is None:
                return
            headers = {k.lower(): v for k, v in doc.get("headers", {}).items()}
            if headers.get("x-demo") != ["added-by-gatewayd"]:
                resp.failure(f"X-Demo not added: {headers.get('x-demo')}")
            elif "user-agent" in headers:
                resp.failure("User-Agent not removed")
            elif resp.headers.get("X-Served-By") != "gatewayd":
                resp.failure(f"X-Served-By: {resp.headers.get('X-Served-By')}")
            else:
                resp.success()

    @task(6)
    def weighted_canary(self) -> None:
        with self.client.get("/echo", name="/echo (90/10)", catch_response=True) as resp:
            doc = _json(resp)
            if doc is None:
                return
            pod = str(doc.get("pod"))
            canary_pods[pod] = canary_pods.get(pod, 0) + 1
            if pod not in ("echo-v1", "echo-v2"):
                resp.failure(f"unexpected pod {pod!r}")
            else:
                resp.success()

    @task(2)
    def header_canary(self) -> None:
        with self.client.get(
            "/echo",
            name="/echo X-Canary: true",
            headers={"X-Canary": "true"},
            catch_response=True,
        ) as resp:
            doc = _json(resp)
            if doc is None:
                return
            if doc.get("pod") != "echo-v2":
                resp.failure(f"X-Canary: true reached {doc.get('pod')!r}, not echo-v2")
            else:
                resp.success()

    @task(1)
    def post_64k(self) -> None:
        with self.client.post(
            "/echo",
            name="/echo 64KiB body",
            data=BIG_BODY,  # type: ignore[arg-type]  # bytes are sent as they are
            headers={"Content-Type": "application/octet-stream"},
            catch_response=True,
        ) as resp:
            doc = _json(resp)
            if doc is None:
                return
            if doc.get("body_bytes") != len(BIG_BODY):
                resp.failure(f"backend read {doc.get('body_bytes')} of {len(BIG_BODY)} bytes")
            else:
                resp.success()


HTTPS_URL = os.environ.get("GATEWAYD_HTTPS_URL", "https://127.0.0.1:8443/secure/locust")
if HTTPS_URL != "off":
    _https = urlsplit(HTTPS_URL)

    class HttpsUser(FastHttpUser):
        """A client of the HTTPS listener: a TLS handshake per connection, then keep-alive
        requests, as a browser does."""

        weight = 1  # DemoUser has 4: one user in five speaks HTTPS
        host = f"{_https.scheme}://{_https.netloc}"
        insecure = True  # the self-signed demo certificate (`gatewayd cert`)
        wait_time = constant(0)

        @task
        def https_get(self) -> None:
            # The absolute URL: locust's --host (the HTTP listener) replaces every user
            # class's host.  No redirects: an answer from the HTTP listener is a failure.
            with self.client.get(
                HTTPS_URL,
                name=f"HTTPS {_https.path or '/'}",
                catch_response=True,
                allow_redirects=False,
            ) as resp:
                doc = _json(resp)
                if doc is None:
                    return
                headers = {k.lower(): v for k, v in doc.get("headers", {}).items()}
                proto = headers.get("x-forwarded-proto")
                if proto not in ("https", ["https"]):
                    resp.failure(f"X-Forwarded-Proto {proto!r}, want https")
                else:
                    resp.success()


@events.init.add_listener  # type: ignore[untyped-decorator]
def remember_environment(environment: Environment, **_kwargs: Any) -> None:
    _environment.append(environment)


@events.test_stop.add_listener  # type: ignore[untyped-decorator]
def check_canary_share(environment: Environment, **_kwargs: Any) -> None:
    """Fail the run when echo-v2's share of the weighted canary is off by > 3 points."""
    total = sum(canary_pods.values())
    v2 = canary_pods.get("echo-v2", 0)
    if total < CANARY_MIN_SAMPLES:
        log.error("canary: only %d samples of GET /echo (need %d)", total, CANARY_MIN_SAMPLES)
        canary_verdict.append(f"FAIL: only {total} samples")
        environment.process_exit_code = 1
        return
    share = v2 / total
    verdict = "OK" if abs(share - CANARY_SHARE) <= CANARY_TOLERANCE else "FAIL"
    log.info(
        "canary: echo-v2 %.1f%% of %d requests (pods %s; want %.0f%% +- %.0f points): %s",
        100 * share,
        total,
        dict(sorted(canary_pods.items())),
        100 * CANARY_SHARE,
        100 * CANARY_TOLERANCE,
        verdict,
    )
    canary_verdict.append(f"{verdict}: echo-v2 {100 * share:.1f}% of {total}")
    if verdict == "FAIL":
        environment.process_exit_code = 1


@events.quit.add_listener  # type: ignore[untyped-decorator]
def print_summary(exit_code: int, **_kwargs: Any) -> None:
    """One line after locust's own tables: the figures ``make locust`` reports."""
    if not _environment or _environment[0].stats is None:
        return
    total = _environment[0].stats.total
    pct = total.get_response_time_percentile
    print(
        f"\nsummary: {total.total_rps:,.0f} requests/s over {total.num_requests:,} requests; "
        f"p50 {pct(0.5):.0f} ms, p95 {pct(0.95):.0f} ms, p99 {pct(0.99):.0f} ms; "
        f"failures {total.num_failures:,}; canary "
        f"{canary_verdict[0] if canary_verdict else 'n/a'}; exit code {exit_code}",
        flush=True,
    )
