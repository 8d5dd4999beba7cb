"""An HTTPS listener and TLS listeners on one port, in-process (feature
GatewayHTTPSAndTLSPassthroughSamePort): the proxy, backends and clients share one uvloop
event loop over real loopback sockets; the snapshot is compiled from manifests by the
same pipeline ``gatewayd run`` uses.

The port carries an HTTPS listener ``*.example.com`` (gatewayd's certificate, an
HTTPRoute to a plain HTTP backend) and a TLS Passthrough listener ``abc.example.com``
(a TLSRoute to a TLS backend with its own certificate).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import ssl
from pathlib import Path

import pytest
from loop_kit import LOCAL, free_port, run
from loop_kit import opened as _opened
from prometheus_client import CollectorRegistry

from gatewayd.pipeline import ConfigPipeline
from gatewayd.proxy.metrics import ProxyMetrics
from gatewayd.proxy.server import Proxy, ProxyOptions
from gatewayd.proxy.snapshot import SnapshotHolder
from gatewayd.routing.snapshot.compiled import Snapshot
from gatewayd.routing.snapshot.table import HTTPRouteTable, SNITable
from gatewayd.tls.certs import load_keypair, secret_manifest, self_signed
from gatewayd.tls.context import server_context

GW_CERT, GW_KEY = self_signed(["other.example.com", "*.example.com"])
BACKEND_CERT, BACKEND_KEY = self_signed(["abc.example.com"])


def der(pem: bytes) -> bytes:
    return ssl.PEM_cert_to_DER_cert(pem.decode("ascii"))


# --------------------------------------------------------------------------- backends


class TLSBackend:
    """Greets each TLS connection with a line, then echoes."""

    def __init__(self) -> None:
        self.connections = 0
        self.port = 0

    async def start(self) -> TLSBackend:
        info = load_keypair(BACKEND_CERT, BACKEND_KEY, now=dt.datetime.now(dt.UTC))
        server = await asyncio.start_server(
            self._handle, LOCAL, 0, ssl=server_context(info, alpn=())
        )
        self.port = server.sockets[0].getsockname()[1]
        _opened.append(server.close)
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        _opened.append(writer.close)
        writer.write(b"tls-backend\n")
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()


class HTTPBackend:
    """Answers every HTTP/1.1 request with its headers as JSON, keeping the connection."""

    def __init__(self) -> None:
        self.connections = 0
        self.requests = 0
        self.port = 0

    async def start(self) -> HTTPBackend:
        server = await asyncio.start_server(self._handle, LOCAL, 0)
        self.port = server.sockets[0].getsockname()[1]
        _opened.append(server.close)
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        _opened.append(writer.close)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.requests += 1
                lines = head.decode("latin-1").split("\r\n")[1:]
                headers = {
                    k.strip().lower(): v.strip()
                    for k, _, v in (line.partition(":") for line in lines if line)
                }
                body = json.dumps(headers).encode()
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                    b"content-length: %d\r\n\r\n%s" % (len(body), body)
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()


# --------------------------------------------------------------------------- config


def manifests(port: int, http_port: int, tls_port: int, *, with_tls: bool = True) -> str:
    tls_listener = f"""
  - name: pass
    port: {port}
    protocol: TLS
    hostname: abc.example.com
    tls: {{mode: Passthrough}}
"""
    docs = f"""
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: gatewayd}}
spec: {{controllerName: gatewayd.dev/gateway-controller}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: gw, namespace: default}}
spec:
  gatewayClassName: gatewayd
  addresses: [{{type: IPAddress, value: {LOCAL}}}]
  listeners:
  - name: web
    port: {port}
    protocol: HTTPS
    hostname: "*.example.com"
    tls:
      mode: Terminate
      certificateRefs: [{{name: gw-cert}}]
{tls_listener if with_tls else ""}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: web, namespace: default}}
spec:
  parentRefs: [{{name: gw, sectionName: web}}]
  rules: [{{backendRefs: [{{name: http-backend, port: 80}}]}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: TLSRoute
metadata: {{name: pass, namespace: default}}
spec:
  parentRefs: [{{name: gw, sectionName: pass}}]
  hostnames: [abc.example.com]
  rules: [{{backendRefs: [{{name: tls-backend, port: 443}}]}}]
"""
    for name, svc_port, target in (("http-backend", 80, http_port), ("tls-backend", 443, tls_port)):
        docs += f"""
---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: default}}
spec: {{ports: [{{name: p, port: {svc_port}}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}-1
  namespace: default
  labels: {{kubernetes.io/service-name: {name}}}
addressType: IPv4
ports: [{{name: p, port: {target}, protocol: TCP}}]
endpoints: [{{addresses: [{LOCAL}], conditions: {{ready: true}}}}]
"""
    return docs + "---\n" + secret_manifest(GW_CERT, GW_KEY, name="gw-cert", namespace="default")


def build(tmp: Path, text: str) -> Snapshot:
    path = tmp / "manifests.yaml"
    path.write_text(text)
    built = ConfigPipeline([str(path)]).build()
    problems = [p.message for p in built.load.problems]
    assert not problems, problems
    return built.snapshot


class Env:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.port = free_port()
        self.http = HTTPBackend()
        self.tls = TLSBackend()
        self.metrics = ProxyMetrics(registry=CollectorRegistry())
        self.proxy = Proxy(SnapshotHolder(), ProxyOptions(access_log=None), self.metrics)

    async def start(self, *, with_tls: bool = True) -> Env:
        await self.http.start()
        await self.tls.start()
        _opened.append(self.proxy.close)
        assert await self.apply(with_tls=with_tls) == {}
        return self

    async def apply(self, *, with_tls: bool = True) -> dict[tuple[str, int], str]:
        text = manifests(self.port, self.http.port, self.tls.port, with_tls=with_tls)
        return await self.proxy.apply(build(self.tmp, text))

    async def connect(self, sni: str | None) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        reader, writer = await asyncio.open_connection(
            LOCAL, self.port, ssl=ctx, server_hostname=sni
        )
        _opened.append(writer.close)
        return reader, writer


def peer_der(writer: asyncio.StreamWriter) -> bytes:
    obj = writer.get_extra_info("ssl_object")
    cert = obj.getpeercert(binary_form=True)
    assert cert is not None
    return bytes(cert)


async def get(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str
) -> tuple[int, dict[str, str], bytes]:
    writer.write(f"GET / HTTP/1.1\r\nhost: {host}\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {
        k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)
    }
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers, body


async def refused(env: Env, sni: str | None) -> None:
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await env.connect(sni)


def tls_results(metrics: ProxyMetrics) -> dict[str, int]:
    return {result: n for (_, result), n in metrics._tls_cx.items()}


# --------------------------------------------------------------------------- compile


def test_mixed_port_compiles_to_one_https_port_with_a_tls_table(tmp_path: Path) -> None:
    snap = build(tmp_path, manifests(8443, 1, 2))
    (lp,) = snap.ports.values()
    assert lp.protocol == "HTTPS"
    assert lp.listener_names == ("web", "pass")
    assert isinstance(lp.table, HTTPRouteTable)
    assert [t.listener_name for t in lp.terminate] == ["web"]
    assert isinstance(lp.tls_table, SNITable)
    assert [listener.name for listener in lp.tls_table.listeners()] == ["pass"]
    # The exact TLS hostname beats the HTTPS wildcard; other names under it are HTTPS.
    assert lp.tls_table.selects_tls("abc.example.com") is True
    assert lp.tls_table.selects_tls("other.example.com") is False
    assert lp.tls_table.selects_tls("x.abc.example.com") is False
    assert lp.tls_table.selects_tls("example.org") is None
    assert lp.tls_table.selects_tls("") is None
    dumped = json.loads(json.dumps(snap.to_json()))["listeners"][0]
    assert dumped["tlsRoutes"]["httpsHostnames"] == ["*.example.com"]
    # Without the TLS listener the port is HTTPS only, as before.
    (alone,) = build(tmp_path, manifests(8443, 1, 2, with_tls=False)).ports.values()
    assert alone.tls_table is None
    assert alone.listener_names == ("web",)


# --------------------------------------------------------------------------- data plane


def test_exact_tls_hostname_is_passed_through_to_the_backend(tmp_path: Path) -> None:
    async def main() -> None:
        env = await Env(tmp_path).start()
        reader, writer = await env.connect("abc.example.com")
        # The client talks TLS with the backend itself: the backend's certificate.
        assert peer_der(writer) == der(BACKEND_CERT)
        assert await reader.readline() == b"tls-backend\n"
        writer.write(b"hello\n")
        assert await reader.readline() == b"hello\n"
        assert env.tls.connections == 1
        assert env.http.connections == 0
        assert tls_results(env.metrics) == {"passthrough": 1}

    run(main())


def test_wildcard_https_hostname_is_terminated_and_served_as_http(tmp_path: Path) -> None:
    async def main() -> None:
        env = await Env(tmp_path).start()
        reader, writer = await env.connect("other.example.com")
        assert peer_der(writer) == der(GW_CERT)
        assert writer.get_extra_info("ssl_object").selected_alpn_protocol() in (None, "http/1.1")
        status, _, body = await get(reader, writer, "other.example.com")
        assert status == 200
        seen = json.loads(body)
        assert seen["x-forwarded-proto"] == "https"
        assert seen["host"] == "other.example.com"
        # Keep-alive: a second request on the same TLS connection.
        status, headers, body = await get(reader, writer, "more.example.com")
        assert status == 200
        assert headers.get("connection") != "close"
        assert json.loads(body)["host"] == "more.example.com"
        assert env.http.requests == 2
        assert env.tls.connections == 0
        # Counted once, as an HTTP connection, while it is open.
        assert env.proxy.n_conns == 1
        assert len(env.proxy.conns) == 1
        assert not env.proxy.tls_routes.conns
        assert tls_results(env.metrics) == {}
        writer.close()
        for _ in range(200):
            if env.proxy.n_conns == 0:
                break
            await asyncio.sleep(0.01)
        assert env.proxy.n_conns == 0
        assert not env.proxy.conns

    run(main())


@pytest.mark.parametrize("host", ["abc.example.com", "example.org"])
def test_host_of_another_listener_is_misdirected(tmp_path: Path, host: str) -> None:
    async def main() -> None:
        env = await Env(tmp_path).start()
        reader, writer = await env.connect("other.example.com")
        status, _, _ = await get(reader, writer, host)
        # abc.example.com selects the TLS listener, example.org none of the port's.
        assert status == 421
        assert env.http.requests == 0

    run(main())


@pytest.mark.parametrize("sni", ["unknown.org", None])
def test_server_name_without_listener_is_closed(tmp_path: Path, sni: str | None) -> None:
    async def main() -> None:
        env = await Env(tmp_path).start()
        await refused(env, sni)
        assert env.http.connections == 0
        assert env.tls.connections == 0
        assert tls_results(env.metrics) == {"no_route" if sni else "no_sni": 1}
        for _ in range(200):
            if env.proxy.n_conns == 0:
                break
            await asyncio.sleep(0.01)
        assert env.proxy.n_conns == 0

    run(main())


def test_adding_or_removing_the_tls_listener_rebinds_route_changes_do_not(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        env = await Env(tmp_path).start(with_tls=False)
        key = (LOCAL, env.port)
        # HTTPS only: the loop's own TLS (fast path); passthrough has no listener.
        assert key in env.proxy.native_tls
        reader, writer = await env.connect("other.example.com")
        assert (await get(reader, writer, "other.example.com"))[0] == 200
        # Without the TLS listener the HTTPS wildcard covers abc.example.com too.
        _, writer = await env.connect("abc.example.com")
        assert peer_der(writer) == der(GW_CERT)
        first = env.proxy.servers[key]

        assert await env.apply(with_tls=True) == {}
        assert key not in env.proxy.native_tls
        second = env.proxy.servers[key]
        assert second is not first
        reader, writer = await env.connect("abc.example.com")
        assert peer_der(writer) == der(BACKEND_CERT)
        reader, writer = await env.connect("other.example.com")
        assert (await get(reader, writer, "other.example.com"))[0] == 200

        # The same listeners again (a reload that changes nothing on the port): kept.
        assert await env.apply(with_tls=True) == {}
        assert env.proxy.servers[key] is second

        assert await env.apply(with_tls=False) == {}
        assert key in env.proxy.native_tls
        assert env.proxy.servers[key] is not second
        reader, writer = await env.connect("other.example.com")
        assert peer_der(writer) == der(GW_CERT)
        assert (await get(reader, writer, "other.example.com"))[0] == 200

    run(main())
