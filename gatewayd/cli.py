"""Command line: wiring only.  `gatewayd run | check | status | explain | cert | echo`."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from gatewayd.pipeline import DEFAULT_ADDRESS_POOL, DEFAULT_CONTROLLER
from gatewayd.proxy.balancer import LB_POLICIES, LEAST_REQUEST, OutlierOptions
from gatewayd.proxy.http.h2_limits import (
    EDGE_H2_LIMITS,
    MAX_HPACK_TABLE_SIZE,
    UPSTREAM_H2_LIMITS,
    H2Limits,
    with_header_limits,
)
from gatewayd.proxy.pathnorm import EscapedSlashes, PathPolicy
from gatewayd.proxy.proxyproto import Network, parse_networks
from gatewayd.routing.config.load import MIB, ConfigLimits
from gatewayd.runtime.kube.election import (
    DEFAULT_LEASE_NAME,
    JITTER_FACTOR,
    LEASE_DURATION,
    RENEW_DEADLINE,
    RETRY_PERIOD,
    LeaderElectionSettings,
)

if TYPE_CHECKING:
    from gatewayd.runtime.sources.kubernetes import KubernetesSource

_UNITS = {"": 1, "k": 1000, "ki": 1024, "m": 1000**2, "mi": MIB, "g": 1000**3, "gi": 1024 * MIB}


def _byte_size(text: str) -> int:
    """An argparse type: bytes, optionally with a unit (``4MiB``, ``512KiB``, ``1G``)."""
    number = text.rstrip("BbGgIiKkMm")
    unit = text[len(number) :].lower().removesuffix("b")
    if not number.isdigit() or unit not in _UNITS:
        raise argparse.ArgumentTypeError(f"not a size such as 4MiB: {text!r}")
    return int(number) * _UNITS[unit]


# RFC 9113 6.5.2 / 6.9.1: flow-control windows are at most 2^31-1; Envoy's HTTP/2
# protocol options take 65535 (the protocol's initial window) as their minimum.
_H2_WINDOW_MIN = 65535
_H2_WINDOW_MAX = 2**31 - 1


def _h2_window(text: str) -> int:
    """An argparse type: an HTTP/2 flow-control window, a size from 64KiB-1 to 2GiB-1."""
    value = _byte_size(text)
    if not _H2_WINDOW_MIN <= value <= _H2_WINDOW_MAX:
        raise argparse.ArgumentTypeError(
            f"must be from {_H2_WINDOW_MIN} to {_H2_WINDOW_MAX} bytes, not {text}"
        )
    return value


def _hpack_table(text: str) -> int:
    """An argparse type: an HPACK dynamic table size, 0 to 64KiB (memory per
    connection)."""
    value = _byte_size(text)
    if value > MAX_HPACK_TABLE_SIZE:
        raise argparse.ArgumentTypeError(
            f"must be at most {MAX_HPACK_TABLE_SIZE} bytes (64KiB), not {text}"
        )
    return value


def h2_limits(args: argparse.Namespace) -> H2Limits:
    """Downstream HTTP/2 limits from ``gatewayd run``'s flags."""
    return _h2_limits(
        args,
        EDGE_H2_LIMITS,
        args.h2_max_concurrent_streams,
        args.h2_initial_stream_window,
        args.h2_initial_connection_window,
    )


def upstream_h2_limits(args: argparse.Namespace) -> H2Limits:
    """Upstream HTTP/2 limits from ``gatewayd run``'s flags: the header limits and
    HPACK table as downstream's."""
    return _h2_limits(
        args,
        UPSTREAM_H2_LIMITS,
        args.upstream_h2_max_concurrent_streams,
        args.upstream_h2_initial_stream_window,
        args.upstream_h2_initial_connection_window,
    )


def _h2_limits(
    args: argparse.Namespace,
    base: H2Limits,
    streams: int,
    stream_window: int,
    connection_window: int,
) -> H2Limits:
    """``base`` with one hop's streams and windows, and the header limits and HPACK
    table both hops share."""
    return with_header_limits(
        dataclasses.replace(
            base,
            max_concurrent_streams=int(streams),
            initial_stream_window=stream_window,
            connection_window=connection_window,
        ),
        list_bytes=args.max_header_bytes,
        count=int(args.max_headers),
        table_size=args.h2_hpack_table_size,
    )


def _add_config_args(p: argparse.ArgumentParser) -> None:
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--config",
        action="append",
        metavar="PATH",
        help="YAML file or directory (read recursively); repeatable",
    )
    source.add_argument(
        "--kubernetes",
        action="store_true",
        help="read the Gateway API objects of a cluster (list and watch the API server); "
        "in-cluster configuration unless --kubeconfig is given",
    )
    p.add_argument(
        "--kubeconfig",
        metavar="PATH",
        help="with --kubernetes: the kubeconfig file (default: in-cluster service account)",
    )
    p.add_argument(
        "--context",
        metavar="NAME",
        help="with --kubernetes: the kubeconfig context (default: its current-context)",
    )
    p.add_argument("--controller-name", default=DEFAULT_CONTROLLER)
    p.add_argument(
        "--address-pool",
        default=DEFAULT_ADDRESS_POOL,
        metavar="CIDR",
        help="addresses given to Gateways without spec.addresses",
    )
    defaults = ConfigLimits()
    for flag, default, what in (
        ("--max-config-file-size", defaults.max_file_bytes, "a larger config file is"),
        ("--max-config-size", defaults.max_total_bytes, "config files beyond this total are"),
    ):
        p.add_argument(
            flag,
            type=_byte_size,
            default=default,
            metavar="BYTES",
            help=f"{what} not read but reported (default: {default // MIB}MiB)",
        )
    p.add_argument(
        "--max-config-nodes",
        type=_at_least(1, int),
        default=defaults.max_nodes,
        metavar="N",
        help="YAML nodes of all config files, each alias counting as the nodes it repeats; "
        "a document beyond it is not loaded and is reported (default: 1000000)",
    )


def _limits(args: argparse.Namespace) -> ConfigLimits:
    return ConfigLimits(
        max_file_bytes=args.max_config_file_size,
        max_total_bytes=args.max_config_size,
        max_nodes=int(args.max_config_nodes),
    )


def outlier_options(args: argparse.Namespace) -> OutlierOptions:
    """``gatewayd run``'s balancing and outlier detection flags."""
    return OutlierOptions(
        lb_policy=args.lb_policy,
        consecutive_5xx=int(args.outlier_consecutive_5xx),
        base_ejection_time=args.outlier_base_ejection_time,
        max_ejection_time=args.outlier_max_ejection_time,
        max_ejection_percent=args.outlier_max_ejection_percent,
    )


def _percent(text: str) -> int:
    """An argparse type: a whole percentage, 0 to 100."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"must be 0 to 100, not {text}")
    return value


def _ratio(text: str) -> float:
    """An argparse type: a number from 0 to 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be from 0 to 1, not {text}")
    return value


def _at_least(minimum: float, kind: type[int] | type[float]) -> Callable[[str], float]:
    """An argparse type: a number of ``kind`` no smaller than ``minimum``."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, not {text}")
        return value

    return parse


def _add_leader_election_args(run: argparse.ArgumentParser) -> None:
    """--kubernetes: which replica writes status (README, "Status write-back and leader
    election").  Timings default to client-go's; tests scale them down."""
    group = run.add_argument_group(
        "status write-back (--kubernetes): only the holder of a Lease writes status"
    )
    group.add_argument(
        "--leader-election-namespace",
        metavar="NAMESPACE",
        help="namespace of the Lease (default: the pod's, from its service account, "
        "else gatewayd-system)",
    )
    group.add_argument(
        "--leader-election-name",
        metavar="NAME",
        default=None,
        help="name of the Lease (default gatewayd-status)",
    )
    group.add_argument(
        "--leader-election-id",
        metavar="ID",
        help="this replica's identity in the Lease (default: $POD_NAME, else hostname_pid)",
    )
    group.add_argument(
        "--no-leader-election",
        action="store_true",
        help="write status without a Lease (a single replica only)",
    )
    for flag, default, what in (
        ("lease-duration", LEASE_DURATION, "a Lease not renewed this long is taken over"),
        (
            "renew-deadline",
            RENEW_DEADLINE,
            "the leader stops writing when it cannot renew this long",
        ),
        ("retry-period", RETRY_PERIOD, "between attempts to acquire or renew"),
    ):
        group.add_argument(
            f"--leader-election-{flag}",
            type=_at_least(0.1, float),
            default=None,
            metavar="SECONDS",
            help=f"{what} (default {default:g}, client-go's)",
        )


def _leader_election(
    parser: argparse.ArgumentParser, args: argparse.Namespace
) -> LeaderElectionSettings:
    def pick(value: float | None, default: float) -> float:
        return default if value is None else value

    settings = LeaderElectionSettings(
        enabled=not args.no_leader_election,
        namespace=args.leader_election_namespace,
        name=args.leader_election_name or DEFAULT_LEASE_NAME,
        identity=args.leader_election_id,
        lease_duration=pick(args.leader_election_lease_duration, LEASE_DURATION),
        renew_deadline=pick(args.leader_election_renew_deadline, RENEW_DEADLINE),
        retry_period=pick(args.leader_election_retry_period, RETRY_PERIOD),
    )
    # client-go's rules: the leader gives up before anybody may take over, and retries
    # at least once before it gives up.
    if not settings.lease_duration > settings.renew_deadline:
        parser.error("--leader-election-lease-duration must exceed the renew deadline")
    if not settings.renew_deadline > JITTER_FACTOR * settings.retry_period:
        parser.error("--leader-election-renew-deadline must exceed 1.2 x the retry period")
    return settings


def _add_edge_args(run: argparse.ArgumentParser) -> None:
    """Request header trust and path normalization; the defaults are Envoy Gateway's
    edge defaults (README, "Security and limits")."""
    run.add_argument(
        "--preserve-request-id",
        action="store_true",
        help="forward a valid client X-Request-Id instead of a new UUID4 (default: new)",
    )
    run.add_argument(
        "--xfcc",
        choices=("sanitize-set", "sanitize"),
        default="sanitize-set",
        help="X-Forwarded-Client-Cert: a client's own is always dropped; sanitize-set (the "
        "default) sends one built from a verified client certificate, sanitize never does",
    )
    run.add_argument(
        "--session-secret-file",
        metavar="PATH",
        help="secret (16+ bytes) the session persistence tokens are authenticated with; "
        "every replica and restart given the same file keeps the sessions (default: "
        "random at each start)",
    )
    run.add_argument(
        "--no-path-normalization",
        dest="path_normalization",
        action="store_false",
        help="route and forward the path without RFC 3986 normalization (decoding "
        "%%-encoded unreserved characters, removing dot-segments, \\ as /; default: on)",
    )
    run.add_argument(
        "--no-merge-slashes",
        dest="merge_slashes",
        action="store_false",
        help="keep adjacent slashes in the path (default: merged into one)",
    )
    run.add_argument(
        "--escaped-slashes",
        choices=[a.value for a in EscapedSlashes],
        default=EscapedSlashes.UNESCAPE_AND_REDIRECT.value,
        help="what %%2F and %%5C in a path get: keep, reject (400), unescape-and-forward, "
        "or unescape-and-redirect (307 to the unescaped path; the default)",
    )
    run.add_argument(
        "--keep-fragment",
        dest="strip_fragment",
        action="store_false",
        help="treat a '#fragment' in the request-target as part of the path or query "
        "(default: cut off before routing)",
    )


def _session_secret(path: str | None) -> bytes | None:
    """The session persistence secret (``--session-secret-file``): the file's bytes,
    at least 16 of them (e.g. ``head -c 32 /dev/urandom``); None: a random one."""
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            secret = f.read(4096)
    except OSError as exc:
        raise SystemExit(f"gatewayd: --session-secret-file {path}: {exc.strerror}") from None
    secret = secret.strip()
    if len(secret) < 16:
        raise SystemExit(
            f"gatewayd: --session-secret-file {path}: needs at least 16 bytes of secret, "
            f"found {len(secret)} (try: head -c 32 /dev/urandom | base64 > {path})"
        )
    return secret


def _path_policy(args: argparse.Namespace) -> PathPolicy:
    """The ``PathPolicy`` of ``_add_edge_args``'s path flags."""
    return PathPolicy(
        normalize=args.path_normalization,
        merge_slashes=args.merge_slashes,
        escaped_slashes=EscapedSlashes(args.escaped_slashes),
        strip_fragment=args.strip_fragment,
    )


def _proxy_protocol_arg(text: str) -> tuple[int | None, tuple[Network, ...]]:
    """``--proxy-protocol [PORT=]CIDRS``: (port or None for every port, networks)."""
    port: int | None = None
    cidrs = text
    if "=" in text:
        head, cidrs = text.split("=", 1)
        if not head.isdigit() or not 1 <= int(head) <= 65535:
            raise argparse.ArgumentTypeError(f"{head!r} is not a port (1-65535)")
        port = int(head)
    try:
        return port, parse_networks(cidrs)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def package_version() -> str:
    """The installed distribution's version (pyproject.toml's ``version``)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("gatewayd")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gatewayd", description="A Python Kubernetes Gateway API data plane."
    )
    parser.add_argument("--version", action="version", version=f"gatewayd {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="serve the Gateways of the configuration")
    _add_config_args(run)
    run.add_argument("--admin-address", default="127.0.0.1:9901", metavar="HOST:PORT")
    run.add_argument("--xff-trusted-hops", type=int, default=0, metavar="N")
    run.add_argument("--access-log", choices=("text", "json", "off"), default="text")
    run.add_argument(
        "--no-trace-context",
        dest="trace_context",
        action="store_false",
        help="forward traceparent/tracestate as received instead of continuing (or "
        "starting) the W3C trace with gatewayd's hop (default: continue)",
    )
    run.add_argument(
        "--otlp-endpoint",
        metavar="URL",
        default=None,
        help="export one span per request over OTLP/HTTP protobuf to URL (a base URL gets "
        "/v1/traces); needs pip install 'gatewayd[otel]' (default: off)",
    )
    run.add_argument(
        "--trace-sample-ratio",
        type=_ratio,
        default=1.0,
        metavar="R",
        help="with --otlp-endpoint: the share (0-1) of the traces gatewayd starts that are "
        "sampled and exported; a caller's sampled flag is followed as is (default: 1)",
    )
    run.add_argument("--drain-timeout", type=float, default=15.0, metavar="SECONDS")
    _add_leader_election_args(run)
    run.add_argument(
        "--workers",
        type=_at_least(1, int),
        default=None,
        metavar="N",
        help="worker processes sharing each listener (default: one per CPU)",
    )
    run.add_argument("--max-connections", type=int, default=10000)
    run.add_argument(
        "--proxy-protocol",
        type=_proxy_protocol_arg,
        action="append",
        default=[],
        metavar="[PORT=]CIDRS",
        help="read a PROXY protocol v1/v2 header on listener port PORT (every port without "
        "PORT=) from the comma-separated trusted source CIDRS; repeatable (README, "
        "'PROXY protocol')",
    )
    run.add_argument(
        "--proxy-protocol-timeout",
        type=_at_least(0.001, float),
        default=15.0,
        metavar="SECONDS",
        help="close a connection whose PROXY header is not complete this long after "
        "accept (default 15, Envoy's listener_filters_timeout)",
    )
    run.add_argument("--idle-timeout", type=float, default=60.0, metavar="SECONDS")
    run.add_argument(
        "--tcp-idle-timeout",
        type=_at_least(0, float),
        default=3600.0,
        metavar="SECONDS",
        help="close L4 splices (TLSRoute, TCPRoute, node-local pass-through) idle this long "
        "(0: never)",
    )
    # UDPRoute flows (README, "TCPRoute and UDPRoute").
    run.add_argument(
        "--udp-idle-timeout",
        type=_at_least(0, float),
        default=60.0,
        metavar="SECONDS",
        help="end a UDP client flow with no datagram either way this long (default 60, "
        "Envoy's udp_proxy idle_timeout; 0: never)",
    )
    run.add_argument(
        "--udp-max-flows",
        type=_at_least(1, int),
        default=10000,
        metavar="N",
        help="most UDP client flows per listener; when full, datagrams of new clients are "
        "dropped (default 10000)",
    )
    run.add_argument(
        "--udp-max-datagram",
        type=_at_least(1, int),
        default=1500,
        metavar="BYTES",
        help="larger UDP datagrams are dropped, either way (default 1500, Envoy's "
        "max_rx_datagram_size)",
    )
    # Request timeouts, Envoy's edge defaults (ProxyOptions says what each one measures).
    run.add_argument(
        "--route-timeout",
        type=_at_least(0, float),
        default=15.0,
        metavar="SECONDS",
        help="504 when the upstream response is not complete this long after the request "
        "is, for rules without timeouts.request (default 15, Envoy's; 0: never)",
    )
    run.add_argument(
        "--stream-idle-timeout",
        type=_at_least(0, float),
        default=300.0,
        metavar="SECONDS",
        help="end a request with no bytes moving either way this long: 408, or a reset once "
        "the response has started (default 300, Envoy's; 0: never)",
    )
    # Retry budget (README, "Retries"): Envoy's retry_budget defaults.
    run.add_argument(
        "--retry-budget-percent",
        type=_at_least(0, float),
        default=20.0,
        metavar="PERCENT",
        help="most requests of a backend retrying at once, as a share of its active "
        "requests (default 20, Envoy's budget_percent)",
    )
    run.add_argument(
        "--retry-budget-min-retries",
        type=_at_least(0, int),
        default=3,
        metavar="N",
        help="retries always allowed at once per backend, whatever the share (default 3, "
        "Envoy's min_retry_concurrency)",
    )
    # Request head limits and the other edge timeouts (README, "Security and limits").
    run.add_argument(
        "--max-header-bytes",
        type=_byte_size,
        default=60 * 1024,
        metavar="SIZE",
        help="largest request head (and upstream response head): 431 for requests, 502 for "
        "responses; over HTTP/2 the decoded header list (+32 bytes a field, "
        "SETTINGS_MAX_HEADER_LIST_SIZE), both hops (default 60KiB, Envoy's "
        "max_request_headers_kb)",
    )
    run.add_argument(
        "--max-headers",
        type=_at_least(1, int),
        default=100,
        metavar="N",
        help="most header fields in a request (431) or upstream response (502), HTTP/1.1 "
        "and HTTP/2 (default 100, Envoy's max_headers_count)",
    )
    # Downstream HTTP/2 limits (README, "HTTP/2 limits"): Envoy's edge defaults.
    run.add_argument(
        "--h2-max-concurrent-streams",
        type=_at_least(1, int),
        default=100,
        metavar="N",
        help="most streams an HTTP/2 client may have open on one connection "
        "(SETTINGS_MAX_CONCURRENT_STREAMS; default 100, Envoy's edge value)",
    )
    run.add_argument(
        "--h2-initial-stream-window",
        type=_h2_window,
        default=64 * 1024,
        metavar="SIZE",
        help="HTTP/2 request body bytes a client may send on one stream before gatewayd "
        "reads them (SETTINGS_INITIAL_WINDOW_SIZE; default 64KiB, Envoy's edge value)",
    )
    run.add_argument(
        "--h2-initial-connection-window",
        type=_h2_window,
        default=1024 * 1024,
        metavar="SIZE",
        help="HTTP/2 request body bytes a client may send on one connection, all streams "
        "together, before gatewayd reads them (default 1MiB, Envoy's edge value)",
    )
    run.add_argument(
        "--h2-hpack-table-size",
        type=_hpack_table,
        default=4096,
        metavar="SIZE",
        help="HPACK dynamic table an HTTP/2 client or backend may use for the headers it "
        "sends gatewayd (SETTINGS_HEADER_TABLE_SIZE; memory per connection; 0 to 64KiB; "
        "default 4KiB, the protocol's and Envoy's)",
    )
    # Upstream HTTP/2 limits (README, "HTTP/2 limits"): h2c and gRPC backends.
    run.add_argument(
        "--upstream-h2-max-concurrent-streams",
        type=_at_least(1, int),
        default=2**31 - 1,
        metavar="N",
        help="most streams gatewayd opens on one backend HTTP/2 connection, never more "
        "than the backend's SETTINGS_MAX_CONCURRENT_STREAMS (default 2147483647: the "
        "backend's value alone, Envoy's cluster default)",
    )
    run.add_argument(
        "--upstream-h2-initial-stream-window",
        type=_h2_window,
        default=64 * 1024,
        metavar="SIZE",
        help="HTTP/2 response body bytes a backend may send on one stream before gatewayd "
        "takes them (SETTINGS_INITIAL_WINDOW_SIZE; default 64KiB)",
    )
    run.add_argument(
        "--upstream-h2-initial-connection-window",
        type=_h2_window,
        default=1024 * 1024,
        metavar="SIZE",
        help="the same for all streams of a backend connection together (default 1MiB)",
    )
    run.add_argument(
        "--upstream-h2-max-connections",
        type=_at_least(1, int),
        default=1024,
        metavar="N",
        help="HTTP/2 connections per backend endpoint; a request finding them all full "
        "gets 503 (default 1024, Envoy's circuit breaker max_connections)",
    )
    run.add_argument(
        "--upstream-idle-floor",
        type=_at_least(0, int),
        default=64,
        metavar="N",
        help="idle HTTP/1.1 connections an endpoint keeps whatever the demand (default 64)",
    )
    run.add_argument(
        "--upstream-idle-ceiling",
        type=_at_least(0, int),
        default=1024,
        metavar="N",
        help="idle HTTP/1.1 connections an endpoint keeps at most; between the floor and "
        "this, as many as are busy (default 1024, Envoy's max_connections)",
    )
    run.add_argument(
        "--request-headers-timeout",
        type=_at_least(0.001, float),
        default=30.0,
        metavar="SECONDS",
        help="a request head (and a client TLS handshake) must arrive within this: 408 "
        "(default 30)",
    )
    run.add_argument(
        "--upstream-connect-timeout",
        type=_at_least(0.001, float),
        default=5.0,
        metavar="SECONDS",
        help="connecting to a backend endpoint (TCP and TLS): 503 UF after this "
        "(default 5, Envoy's connect_timeout)",
    )
    # Endpoint balancing and outlier detection (README, "Endpoints and balancing").
    run.add_argument(
        "--lb-policy",
        choices=LB_POLICIES,
        default=LEAST_REQUEST,
        help="endpoint choice within a backend: least-request (power of two choices over "
        "requests in flight, Envoy's LEAST_REQUEST) or round-robin (default least-request)",
    )
    run.add_argument(
        "--outlier-consecutive-5xx",
        type=_at_least(0, int),
        default=5,
        metavar="N",
        help="connect failures, resets and 502/503/504 answers in a row that eject an "
        "endpoint (default 5, Envoy's consecutive_5xx; 0: outlier detection off)",
    )
    run.add_argument(
        "--outlier-base-ejection-time",
        type=_at_least(0.001, float),
        default=30.0,
        metavar="SECONDS",
        help="first ejection of an endpoint; doubled on each repeat (default 30)",
    )
    run.add_argument(
        "--outlier-max-ejection-time",
        type=_at_least(0.001, float),
        default=300.0,
        metavar="SECONDS",
        help="longest ejection (default 300)",
    )
    run.add_argument(
        "--outlier-max-ejection-percent",
        type=_percent,
        default=50,
        metavar="PERCENT",
        help="most of one backend's endpoints ejected at once; one can always be (default 50)",
    )
    run.add_argument(
        "--no-watch",
        dest="watch",
        action="store_false",
        help="do not reload when config files change (SIGHUP still reloads)",
    )
    run.add_argument(
        "--tproxy",
        action="store_true",
        help="node-local mode: transparent listener + nftables TPROXY diversion of Gateway "
        "addresses and Service ClusterIPs with routes (GAMMA); needs CAP_NET_ADMIN",
    )
    run.add_argument("--tproxy-port", type=int, default=15001, metavar="PORT")
    run.add_argument("--tproxy-mark", type=lambda v: int(v, 0), default=0x1, metavar="MARK")
    run.add_argument(
        "--tproxy-dry-run",
        action="store_true",
        help="print the nftables ruleset and policy routing --tproxy would install, then exit",
    )
    _add_edge_args(run)

    check = sub.add_parser("check", help="validate a configuration and print its status")
    _add_config_args(check)

    status = sub.add_parser("status", help="print the status of a running gatewayd")
    from gatewayd.statuscli import add_status_arguments

    add_status_arguments(status)

    explain = sub.add_parser(
        "explain",
        help="why a request goes where it goes (listener, rule, filters, backends)",
        description="Explain how a request is routed, against a running daemon's snapshot "
        "(admin POST /explain) or --config files.  Exit 0 routed, 1 not routed, 2 usage.",
    )
    from gatewayd.explaincli import add_arguments as add_explain_arguments

    add_explain_arguments(explain)

    cert = sub.add_parser("cert", help="write a self-signed certificate as a Secret manifest")
    from gatewayd.tls.cli_cert import add_cert_arguments

    add_cert_arguments(cert)

    echo = sub.add_parser("echo", help="a small echo backend for demos and tests")
    echo.add_argument("--listen", default="127.0.0.1:3000", metavar="HOST:PORT")
    echo.add_argument("--name", default=None)
    echo.add_argument("--namespace", default=None)
    return parser


def _check_source_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """--kubeconfig and --context only with --kubernetes, and every --config path must
    exist (exit 2, like argparse): a typo is a usage error, not a daemon serving nothing."""
    if args.command not in ("run", "check") or args.kubernetes:
        return
    for path in args.config or ():
        if not os.path.exists(path):
            parser.error(f"--config {path}: no such file or directory")
    for flag in ("kubeconfig", "context"):
        if getattr(args, flag) is not None:
            parser.error(f"--{flag} is only used with --kubernetes")
    if args.command == "run":
        for name, value in vars(args).items():
            if name.startswith("leader_election_") and value is not None:
                parser.error(f"--{name.replace('_', '-')} is only used with --kubernetes")
        if args.no_leader_election:
            parser.error("--no-leader-election is only used with --kubernetes")


def _kube_source(args: argparse.Namespace, *, watch: bool = True) -> KubernetesSource:
    from gatewayd.runtime.sources.kubernetes import KubernetesSource

    return KubernetesSource(kubeconfig=args.kubeconfig, context=args.context, watch=watch)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_source_args(parser, args)
    if args.command == "run":
        election = _leader_election(parser, args) if args.kubernetes else None
        return _run(args, election)
    if args.command == "check":
        from gatewayd.checkcli import check_kubernetes, check_main

        if args.kubernetes:
            return check_kubernetes(
                _kube_source(args, watch=False),
                controller_name=args.controller_name,
                address_pool=args.address_pool,
                limits=_limits(args),
            )
        return check_main(
            args.config,
            controller_name=args.controller_name,
            address_pool=args.address_pool,
            limits=_limits(args),
        )
    if args.command == "status":
        from gatewayd.statuscli import status_run

        return status_run(args, parser)
    if args.command == "explain":
        from gatewayd.explaincli import explain_main

        return explain_main(args)
    if args.command == "cert":
        from gatewayd.tls.cli_cert import cert_main

        return cert_main(
            args.hosts,
            name=args.name,
            namespace=args.namespace,
            out=sys.stdout,
            days=args.days,
            key_type=args.key_type,
        )
    if args.command == "echo":
        from gatewayd.proxy.echo import run_echo

        return run_echo(args.listen, name=args.name, namespace=args.namespace)
    return 2


def _default_workers() -> int:
    # gatewayd.workers (multiprocessing, ctypes) only when --workers is not given: a
    # --workers 1 daemon serves in its own process and never imports it.
    from gatewayd.workers import default_workers

    return default_workers()


def _run(args: argparse.Namespace, election: LeaderElectionSettings | None = None) -> int:
    import uvloop

    from gatewayd.daemon import RunOptions, configure_logging, run
    from gatewayd.proxy.server import ProxyOptions
    from gatewayd.proxy.udp import UDPOptions

    configure_logging()
    tproxy = None
    if args.tproxy or args.tproxy_dry_run:
        from gatewayd.tproxy.rules import TproxySettings

        tproxy = TproxySettings(port=args.tproxy_port, mark=args.tproxy_mark)
        if args.tproxy_dry_run:
            from gatewayd.tproxy.runtime import dry_run

            if args.kubernetes:
                print("gatewayd: --tproxy-dry-run reads --config files only", file=sys.stderr)
                return 2

            return dry_run(
                args.config,
                controller_name=args.controller_name,
                address_pool=args.address_pool,
                settings=tproxy,
            )
        if args.workers is not None and args.workers > 1:
            # The transparent listener and the kernel rules belong to one process.
            logging.getLogger("gatewayd").warning("--tproxy runs one worker: --workers ignored")
            args.workers = 1
    if args.otlp_endpoint:
        from gatewayd.proxy.spans import endpoint_problem

        problem = endpoint_problem(args.otlp_endpoint)
        if problem is not None:
            print(f"gatewayd: --otlp-endpoint: {problem}", file=sys.stderr)
            return 2
    options = RunOptions(
        config=args.config or [],
        source=_kube_source(args) if args.kubernetes else None,
        admin_address=args.admin_address,
        address_pool=args.address_pool,
        controller_name=args.controller_name,
        limits=_limits(args),
        drain_timeout=args.drain_timeout,
        watch=args.watch,
        tproxy=tproxy,
        leader_election=election,
        workers=1 if tproxy is not None else (args.workers or _default_workers()),
        udp=UDPOptions(
            idle_timeout=args.udp_idle_timeout,
            max_flows=int(args.udp_max_flows),
            max_datagram=int(args.udp_max_datagram),
            access_log=None if args.access_log == "off" else args.access_log,
        ),
        proxy=ProxyOptions(
            xff_trusted_hops=args.xff_trusted_hops,
            access_log=None if args.access_log == "off" else args.access_log,
            max_connections=args.max_connections,
            idle_timeout=args.idle_timeout,
            tcp_idle_timeout=args.tcp_idle_timeout,
            route_timeout=args.route_timeout,
            stream_idle_timeout=args.stream_idle_timeout,
            max_header_bytes=args.max_header_bytes,
            max_headers=int(args.max_headers),
            h2=h2_limits(args),
            upstream_h2=upstream_h2_limits(args),
            upstream_h2_max_connections=int(args.upstream_h2_max_connections),
            upstream_idle_floor=int(args.upstream_idle_floor),
            upstream_idle_ceiling=int(args.upstream_idle_ceiling),
            header_timeout=args.request_headers_timeout,
            upstream_connect_timeout=args.upstream_connect_timeout,
            preserve_request_id=args.preserve_request_id,
            path=_path_policy(args),
            xfcc_set=args.xfcc == "sanitize-set",
            proxy_protocol=tuple(args.proxy_protocol),
            proxy_protocol_timeout=args.proxy_protocol_timeout,
            **(
                {"session_secret": secret}
                if (secret := _session_secret(args.session_secret_file)) is not None
                else {}
            ),
            outlier=outlier_options(args),
            retry_budget_percent=args.retry_budget_percent,
            retry_budget_min=int(args.retry_budget_min_retries),
            trace_context=args.trace_context,
            otlp_endpoint=args.otlp_endpoint,
            trace_sample=args.trace_sample_ratio,
        ),
    )
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(run(options))


if __name__ == "__main__":
    sys.exit(main())
