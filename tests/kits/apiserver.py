"""A Kubernetes API-server test double that speaks the real HTTP protocol.

No kube-apiserver can be installed on a test machine, so the tests run the real client
library (kubernetes_asyncio, or a ``gatewayd run --kubernetes`` subprocess) against this
double: an aiohttp server on its own thread and event loop, bound to 127.0.0.1 on an
ephemeral port, HTTPS with a CA and server certificate made for the run, bearer-token
auth.

Usage::

    from kits.apiserver import ApiServerDouble

    with ApiServerDouble() as api:                 # starts the thread; stops it on exit
        api.create({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
                    "metadata": {"name": "gw", "namespace": "default"}, "spec": {...}})
        api.write_kubeconfig(tmp_path / "kubeconfig")   # for a subprocess or the loader
        ...                                          # code under test talks HTTP to it
        api.wait_for(lambda: api.requests(verb="patch", path_contains="/status"))
        gw = api.get("gateway.networking.k8s.io", "gateways", "gw", namespace="default")

The ``apiserver`` fixture of tests/conftest.py gives a started double per test, and
``apiserver_kubeconfig`` the path of a kubeconfig file for it.  A test
that runs kubernetes_asyncio in its own ``asyncio.run`` should ``await
api.async_wait_disconnected()`` after closing its ApiClient (see that method).

What it serves, as kube-apiserver does:

* discovery: ``/version``, ``/api``, ``/api/v1``, ``/apis``, ``/apis/<group>``,
  ``/apis/<group>/<version>`` (APIResourceList with ``x/status`` subresources) for core
  v1 (namespaces, services, endpoints, secrets, configmaps, pods), discovery.k8s.io/v1
  endpointslices, coordination.k8s.io/v1 leases and the Gateway API CRDs as the
  experimental channel of Gateway API v1.5/v1.6 installs them (v1 for every kind;
  v1beta1 for gatewayclasses, gateways, httproutes, referencegrants; v1alpha2 for
  tlsroutes, tcproutes, udproutes; v1alpha3 for tlsroutes, backendtlspolicies), plus
  backendlbpolicies at v1alpha2 only (the experimental channel of v1.2-v1.3 had it).
  ``ApiServerDouble(omit=[...])`` leaves out a group, a group/version or a
  group/version/resource ("missing CRD" tests): discovery and every URL under it 404.
* objects: one store per group and resource shared by all its versions (``apiVersion``
  follows the URL), one global increasing ``resourceVersion``, ``uid``,
  ``creationTimestamp``, ``generation`` bumped when anything but metadata and status
  changes; finalizers delay a delete (``deletionTimestamp``) until they are removed.
* list (all namespaces or one) with ``metadata.resourceVersion``; ``labelSelector``
  (=, ==, !=, in, notin, exists, !exists) and ``fieldSelector`` (``metadata.name``,
  ``metadata.namespace``, = == !=); ``limit``/``continue`` (pages of the current state,
  not of a snapshot); ``resourceVersionMatch=Exact`` at any version but the newest ->
  HTTP 410 Expired (the double keeps no snapshots; the real server also serves versions
  still in its history), a ``resourceVersion`` newer than the store -> 504 "Too large
  resource version" at once (the real server first waits up to 3 s).
* watch (``watch=true|1``): newline-delimited JSON events over a chunked response.
  Without ``resourceVersion`` (or with ``"0"``) a synthetic ADDED per matching object
  comes first (``sendInitialEvents=true`` ends it with a BOOKMARK annotated
  ``k8s.io/initial-events-end``); with one, the events after it are replayed from a
  bounded history.  A resourceVersion older than that history is answered as the real
  server does: HTTP 200, then one ERROR event whose object is a Status with code 410,
  reason Expired, then the end of the stream.  BOOKMARKs every ``bookmark_interval``
  seconds when ``allowWatchBookmarks=true``; ``timeoutSeconds`` ends the stream
  cleanly.  A watcher that falls behind the history gets the same 410 ERROR.  With a
  selector, an object moving in or out of it is an ADDED or DELETED event.
* writes: POST (409 AlreadyExists, ``generateName``), PUT (409 Conflict on a stale
  ``metadata.resourceVersion``; custom resources need one, 422 without), PATCH with
  ``application/merge-patch+json``, ``application/strategic-merge-patch+json`` (built-in
  kinds only; applied as a merge patch, lists are replaced) and
  ``application/json-patch+json`` (a JSON array; an object body is 400 BadRequest as on
  the real server, which is what kubernetes_asyncio's CustomObjectsApi sends for a dict
  body unless the caller passes ``_content_type="application/merge-patch+json"``),
  DELETE (with ``preconditions``), DELETE on a collection (with selectors).
  Server-side apply is 415.  The main resource ignores ``.status``; ``/status`` (PUT,
  PATCH) changes only ``.status``.  Errors carry a ``Status`` body with the real reason
  (NotFound, AlreadyExists, Conflict, Invalid, BadRequest, Unauthorized, Expired,
  ServiceUnavailable).  Namespaces are not enforced: an object may live in a namespace
  that has no Namespace object.

Test controls (safe from any thread; none may be called on the double's own loop):

* objects: :meth:`create` (keeps ``.status``), :meth:`update`, :meth:`patch`,
  :meth:`patch_status`, :meth:`delete`, :meth:`get`, :meth:`try_get`,
  :meth:`list_objects`, :attr:`resource_version`;
* watches: :meth:`expire_history` (the next watch from an older resourceVersion gets
  410), :meth:`drop_watches` (abort every open watch connection), :meth:`end_watches`
  (end them cleanly), :attr:`open_watches`, :attr:`open_connections`;
* failures: :meth:`set_unavailable` ("503" answers 503 ServiceUnavailable, "refuse"
  closes the listening socket and cuts connections on their next request, ``None``
  serves again on the same port), :meth:`pause` / :meth:`resume` (requests hang until
  resumed); ``tokens`` is the set of accepted bearer tokens (edit it to rotate);
* observing: :meth:`requests` (the log, filtered by verb, method, path, status, time),
  :meth:`wait_for` / :meth:`async_wait_for` (a condition re-checked at every request and
  change), :meth:`wait_for_object`, :meth:`async_wait_disconnected`; ``errors`` lists
  the double's own unexpected exceptions (the ``apiserver`` fixture asserts it empty).

``stop()`` then ``start()`` restarts the server on the same port with the same CA and
the same objects (an API-server restart as a client sees it).

Bounds: request bodies at most 3 MiB (the real server's limit), the event history
``history_size`` events, the request log ``log_size`` entries, at most ``max_watches``
open watches (429 past it).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import datetime
import ipaddress
import json
import re
import ssl
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

T = TypeVar("T")
Obj = dict[str, Any]

LOCALHOST = "127.0.0.1"
GATEWAY_GROUP = "gateway.networking.k8s.io"
MAX_BODY = 3 * 1024 * 1024  # kube-apiserver's request body limit (3 MiB)
KUBE_VERSION = {"major": "1", "minor": "33", "gitVersion": "v1.33.0-apiserver-double"}

MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_PATCH = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"

_METHOD_VERBS = {
    "GET": "get",
    "POST": "create",
    "PUT": "update",
    "PATCH": "patch",
    "DELETE": "delete",
}
ALL_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")
STATUS_VERBS = ("get", "patch", "update")


@dataclass(frozen=True, slots=True)
class Resource:
    """One served resource of one group/version (an APIResourceList entry)."""

    group: str  # "" for the core group
    version: str
    plural: str
    kind: str
    namespaced: bool
    status: bool = True  # has a /status subresource
    short_names: tuple[str, ...] = ()

    @property
    def group_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def custom(self) -> bool:
        """Custom resources: update needs a resourceVersion, no strategic merge patch."""
        return self.group == GATEWAY_GROUP

    @property
    def qualified(self) -> str:
        return f"{self.plural}.{self.group}" if self.group else self.plural


def _gateway_api() -> list[Resource]:
    g = GATEWAY_GROUP
    kinds = {
        "gatewayclasses": ("GatewayClass", False, ("gc",)),
        "gateways": ("Gateway", True, ("gtw",)),
        "httproutes": ("HTTPRoute", True, ()),
        "grpcroutes": ("GRPCRoute", True, ()),
        "tlsroutes": ("TLSRoute", True, ()),
        "tcproutes": ("TCPRoute", True, ()),
        "udproutes": ("UDPRoute", True, ()),
        "referencegrants": ("ReferenceGrant", True, ("refgrant",)),
        "backendtlspolicies": ("BackendTLSPolicy", True, ("btlspolicy",)),
        "listenersets": ("ListenerSet", True, ("lset",)),
        "backendlbpolicies": ("BackendLBPolicy", True, ("blbpolicy",)),
    }
    served = {
        "v1": [k for k in kinds if k != "backendlbpolicies"],
        "v1beta1": ["gatewayclasses", "gateways", "httproutes", "referencegrants"],
        "v1alpha2": ["tlsroutes", "tcproutes", "udproutes", "backendlbpolicies"],
        "v1alpha3": ["tlsroutes", "backendtlspolicies"],
    }
    out = []
    for version, plurals in served.items():
        for plural in plurals:
            kind, namespaced, short = kinds[plural]
            # ReferenceGrant has no status subresource.
            status = plural != "referencegrants"
            out.append(Resource(g, version, plural, kind, namespaced, status, short))
    return out


DEFAULT_RESOURCES: tuple[Resource, ...] = (
    Resource("", "v1", "namespaces", "Namespace", False, True, ("ns",)),
    Resource("", "v1", "services", "Service", True, True, ("svc",)),
    Resource("", "v1", "endpoints", "Endpoints", True, False, ("ep",)),
    Resource("", "v1", "secrets", "Secret", True, False),
    Resource("", "v1", "configmaps", "ConfigMap", True, False, ("cm",)),
    Resource("", "v1", "pods", "Pod", True, True, ("po",)),
    Resource("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice", True, False),
    Resource("coordination.k8s.io", "v1", "leases", "Lease", True, False),
    *_gateway_api(),
)


# --------------------------------------------------------------------------- errors


class ApiError(Exception):
    """A failure answered with a ``Status`` body, as kube-apiserver does."""

    def __init__(
        self,
        code: int,
        reason: str,
        message: str,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = dict(details or {})

    def status(self) -> Obj:
        body: Obj = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details:
            body["details"] = self.details
        return body


def _not_found(res: Resource, name: str) -> ApiError:
    return ApiError(
        404,
        "NotFound",
        f'{res.qualified} "{name}" not found',
        {"name": name, "group": res.group, "kind": res.plural},
    )


def _conflict(res: Resource, name: str) -> ApiError:
    return ApiError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {res.qualified} "{name}": the object has been '
        "modified; please apply your changes to the latest version and try again",
        {"name": name, "group": res.group, "kind": res.plural},
    )


def _expired(message: str) -> ApiError:
    return ApiError(410, "Expired", message)


NO_RESOURCE = ApiError(404, "NotFound", "the server could not find the requested resource")


# --------------------------------------------------------------------------- selectors

_LABEL_TERM = re.compile(
    r"^\s*(?P<neg>!)?\s*(?P<key>[A-Za-z0-9_./-]+)\s*"
    r"(?:(?P<op>==|=|!=)\s*(?P<value>[A-Za-z0-9_.-]*)"
    r"|\s(?P<setop>in|notin)\s*\((?P<values>[^)]*)\))?\s*$"
)


def _split_terms(selector: str) -> list[str]:
    """Split on commas outside parentheses."""
    terms: list[str] = []
    cur: list[str] = []
    depth = 0
    for ch in selector:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            terms.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    terms.append("".join(cur))
    return [t for t in terms if t.strip()]


Matcher = Callable[[Obj], bool]


def label_matcher(selector: str) -> Matcher:
    """A labelSelector as the API server parses it; raises ApiError 400 when invalid."""
    requirements: list[tuple[str, str, frozenset[str]]] = []  # (operator, key, values)
    for term in _split_terms(selector):
        m = _LABEL_TERM.match(term)
        if not m or (m["neg"] and (m["op"] or m["setop"])):
            raise ApiError(400, "BadRequest", f"unable to parse requirement: {term!r}")
        if m["op"]:
            op = "notin" if m["op"] == "!=" else "in"
            requirements.append((op, m["key"], frozenset([m["value"]])))
        elif m["setop"]:
            values = frozenset(v.strip() for v in m["values"].split(",") if v.strip())
            requirements.append((m["setop"], m["key"], values))
        else:
            requirements.append(("!exists" if m["neg"] else "exists", m["key"], frozenset()))

    def match(obj: Obj) -> bool:
        labels = obj.get("metadata", {}).get("labels") or {}
        return all(_label_ok(op, key, values, labels) for op, key, values in requirements)

    return match


def _label_ok(op: str, key: str, values: frozenset[str], labels: Mapping[str, str]) -> bool:
    # "!=" and "notin" also match objects without the label, as on the real server.
    if op == "exists":
        return key in labels
    if op == "!exists":
        return key not in labels
    if op == "in":
        return labels.get(key) in values
    return labels.get(key) not in values


def field_matcher(selector: str, res: Resource) -> Matcher:
    """A fieldSelector on metadata.name / metadata.namespace (what CRDs support)."""
    requirements: list[tuple[str, str, bool]] = []  # (metadata field, value, negated)
    for term in _split_terms(selector):
        m = re.match(r"^\s*([A-Za-z.]+)\s*(==|=|!=)\s*(.*?)\s*$", term)
        if not m:
            raise ApiError(400, "BadRequest", f"invalid selector: {term!r}")
        path, op, value = m.groups()
        if path not in ("metadata.name", "metadata.namespace"):
            raise ApiError(
                400,
                "BadRequest",
                f'field label not supported: {path} for {res.kind} "{res.group_version}"',
            )
        requirements.append((path.split(".")[1], value, op == "!="))

    def match(obj: Obj) -> bool:
        meta = obj["metadata"]
        return all((meta.get(f, "") == v) != neg for f, v, neg in requirements)

    return match


# --------------------------------------------------------------------------- patches


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise ApiError(400, "BadRequest", f"invalid JSON pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _walk(doc: Any, parts: list[str]) -> Any:
    for part in parts:
        if isinstance(doc, list):
            doc = doc[int(part)]
        elif isinstance(doc, dict):
            doc = doc[part]
        else:
            raise KeyError(part)
    return doc


def json_patch(doc: Any, ops: Any) -> Any:
    """RFC 6902 JSON patch; a body that is not an array is a 400, as on the real server."""
    if not isinstance(ops, list):
        raise ApiError(
            400, "BadRequest", "json: cannot unmarshal object into Go value of type jsonpatch.Patch"
        )
    doc = copy.deepcopy(doc)
    for op in ops:
        try:
            name, parts = op["op"], _pointer(op["path"])
            if name == "test":
                if _walk(doc, parts) != op["value"]:
                    raise ApiError(422, "Invalid", f"testing value {op['path']} failed")
                continue
            if name in ("move", "copy"):
                src = _pointer(op["from"])
                value = copy.deepcopy(_walk(doc, src))
                if name == "move":
                    parent = _walk(doc, src[:-1])
                    del parent[int(src[-1]) if isinstance(parent, list) else src[-1]]
                name, op = "add", {"value": value}
            if not parts:
                if name == "remove":
                    raise ApiError(422, "Invalid", "cannot remove the root")
                doc = copy.deepcopy(op["value"])
                continue
            parent = _walk(doc, parts[:-1])
            last = parts[-1]
            if isinstance(parent, list):
                idx = len(parent) if last == "-" else int(last)
                if name == "add":
                    parent.insert(idx, copy.deepcopy(op["value"]))
                elif name == "remove":
                    del parent[idx]
                elif name == "replace":
                    parent[idx] = copy.deepcopy(op["value"])
                else:
                    raise ApiError(400, "BadRequest", f"unexpected kind of operation {name!r}")
            elif isinstance(parent, dict):
                if name == "add":
                    parent[last] = copy.deepcopy(op["value"])
                elif name in ("remove", "replace"):
                    if last not in parent:
                        raise KeyError(last)
                    if name == "remove":
                        del parent[last]
                    else:
                        parent[last] = copy.deepcopy(op["value"])
                else:
                    raise ApiError(400, "BadRequest", f"unexpected kind of operation {name!r}")
            else:
                raise KeyError(last)
        except (KeyError, IndexError, ValueError, TypeError) as exc:
            raise ApiError(
                422, "Invalid", f"the server rejected our request due to an error: {exc!r}"
            ) from exc
    return doc


# --------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class Request:
    """One request as the double saw it."""

    method: str  # HTTP method: GET, POST, PUT, PATCH, DELETE
    # Kubernetes verb: get, list, watch, create, update, patch, delete, deletecollection,
    # or discovery
    verb: str
    path: str
    query: dict[str, str]
    body: Any  # parsed JSON, or None
    content_type: str
    status: int | None  # the answer's status; None while a watch is open or when refused
    time: float = field(default_factory=time.monotonic)


@dataclass(frozen=True, slots=True)
class _Event:
    rv: int
    type: str  # ADDED, MODIFIED, DELETED
    key: tuple[str, str]  # (group, plural)
    namespace: str
    obj: Obj
    old: Obj | None  # the object before a MODIFIED, for selector moves


@dataclass(slots=True, eq=False)
class _Watch:
    res: Resource
    namespace: str | None
    matches: Matcher
    wake: asyncio.Event
    response: web.StreamResponse | None = None
    ended: bool = False


@dataclass(frozen=True, slots=True)
class InCluster:
    """Files and environment that make the in-cluster config loader find the double."""

    env: dict[str, str]  # KUBERNETES_SERVICE_HOST / KUBERNETES_SERVICE_PORT
    token_path: Path
    ca_path: Path
    namespace_path: Path


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _make_pki(hosts: Iterable[str]) -> tuple[bytes, bytes, bytes]:
    """A CA and a server certificate for ``hosts``: (ca_pem, cert_pem, key_pem)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "apiserver-double-ca")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    key_pem = key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return ca.public_bytes(pem), cert.public_bytes(pem), key_pem


# --------------------------------------------------------------------------- the double


class ApiServerDouble:
    """An in-process Kubernetes API server for tests; see the module docstring."""

    def __init__(
        self,
        *,
        tls: bool = True,
        token: str | None = "double-token",
        omit: Iterable[str] = (),
        resources: Iterable[Resource] = DEFAULT_RESOURCES,
        history_size: int = 1000,
        log_size: int = 10_000,
        bookmark_interval: float = 1.0,
        max_watches: int = 256,
    ) -> None:
        if history_size < 1 or log_size < 1:
            raise ValueError("history_size and log_size must be at least 1")
        omitted = set(omit)

        def kept(r: Resource) -> bool:
            return not (
                r.group in omitted
                or f"{r.group}/{r.version}" in omitted
                or f"{r.group}/{r.version}/{r.plural}" in omitted
                or (not r.group and f"{r.version}/{r.plural}" in omitted)
            )

        self.resources: tuple[Resource, ...] = tuple(r for r in resources if kept(r))
        self._by_path = {(r.group, r.version, r.plural): r for r in self.resources}
        self.tls = tls
        self.tokens: set[str] = {token} if token else set()
        self.bookmark_interval = bookmark_interval
        self.max_watches = max_watches
        self.history_size = history_size

        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._objects: dict[tuple[str, str], dict[tuple[str, str], Obj]] = {}
        self._rv = 0
        self._history: deque[_Event] = deque(maxlen=history_size)
        self._compacted = 0  # a watch from rv R is served iff R >= this
        self._log: deque[Request] = deque(maxlen=log_size)
        self._watches: set[_Watch] = set()
        self._unavailable: str | None = None
        self._streaming: set[int] = set()  # ids of requests answered by a watch stream
        self.errors: list[str] = []  # unexpected exceptions in the double (should stay empty)
        self._paused: asyncio.Event | None = None

        self.ca_pem = b""
        self._cert_pem = b""
        self._key_pem = b""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._ssl: ssl.SSLContext | None = None
        self.port = 0

    # ------------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{LOCALHOST}:{self.port}"

    def start(self) -> ApiServerDouble:
        if self.tls and not self.ca_pem:  # a restart keeps the CA clients already trust
            self.ca_pem, self._cert_pem, self._key_pem = _make_pki([LOCALHOST, "localhost"])
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._paused = None
        started = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._start())
            except BaseException as exc:  # reported to the starting thread
                failure.append(exc)
                started.set()
                loop.close()
                return
            started.set()
            loop.run_forever()
            loop.run_until_complete(self._stop())
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        self._thread = threading.Thread(target=run, name="apiserver-double", daemon=True)
        self._thread.start()
        if not started.wait(10.0):
            raise RuntimeError("the API server double did not start in 10 s")
        if failure:
            raise failure[0]
        return self

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10.0)
        self._thread = None
        self._loop = None

    def __enter__(self) -> ApiServerDouble:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _start(self) -> None:
        app = web.Application(client_max_size=MAX_BODY, handler_args={"max_field_size": 16384})
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(
            app,
            access_log=None,
            handle_signals=False,
            shutdown_timeout=0.5,
            # A watch whose client went away ends at once (its task is cancelled), so
            # open_watches counts only connected watchers.
            handler_cancellation=True,
        )
        await self._runner.setup()
        if self.tls:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            # load_cert_chain reads files only; they live just long enough for it.
            with tempfile.TemporaryDirectory(prefix="apiserver-double-") as tmp:
                crt, key = Path(tmp) / "tls.crt", Path(tmp) / "tls.key"
                crt.write_bytes(self._cert_pem)
                key.touch(0o600)
                key.write_bytes(self._key_pem)
                ctx.load_cert_chain(crt, key)
            self._ssl = ctx
        await self._listen()

    async def _listen(self) -> None:
        assert self._runner is not None
        site = web.TCPSite(
            self._runner,
            LOCALHOST,
            self.port,
            ssl_context=self._ssl,
            reuse_address=True,
        )
        await site.start()
        self._site = site
        if not self.port:
            self.port = int(self._runner.addresses[0][1])

    async def _stop(self) -> None:
        self._abort_watches()
        if self._paused is not None:
            self._paused.set()
        if self._runner is not None:
            # Cut every connection, as a stopped server does: a graceful TLS close would
            # still be waiting for the client's close_notify when this loop closes, and
            # leak its socket.
            server = self._runner.server
            for handler in list(server.connections) if server is not None else []:
                if handler.transport is not None:
                    handler.transport.abort()
            await self._runner.cleanup()
            self._runner = None
            for _ in range(3):  # let the aborted transports run connection_lost
                await asyncio.sleep(0)

    def _on_loop(self, fn: Callable[[], Any]) -> None:
        """Run ``fn`` on the server loop and wait for it (from any other thread)."""
        loop = self._loop
        if loop is None:
            raise RuntimeError("the API server double is not running")

        async def call() -> Any:
            result = fn()
            if asyncio.iscoroutine(result):
                result = await result
            return result

        if threading.current_thread() is self._thread:
            raise RuntimeError("call test controls from a test thread, not the server loop")
        asyncio.run_coroutine_threadsafe(call(), loop).result(10.0)

    # ------------------------------------------------------------------ client config

    def kubeconfig(self, *, context: str = "double", namespace: str | None = None) -> Obj:
        cluster: Obj = {"server": self.url}
        if self.tls:
            cluster["certificate-authority-data"] = base64.b64encode(self.ca_pem).decode()
        user: Obj = {"token": next(iter(sorted(self.tokens)))} if self.tokens else {}
        ctx: Obj = {"cluster": context, "user": context}
        if namespace:
            ctx["namespace"] = namespace
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": context, "cluster": cluster}],
            "users": [{"name": context, "user": user}],
            "contexts": [{"name": context, "context": ctx}],
            "current-context": context,
            "preferences": {},
        }

    def write_kubeconfig(
        self, path: str | Path, *, context: str = "double", namespace: str | None = None
    ) -> Path:
        """Write a kubeconfig (certificate-authority-data, token) for this double."""
        path = Path(path)
        path.write_text(yaml.safe_dump(self.kubeconfig(context=context, namespace=namespace)))
        path.chmod(0o600)
        return path

    def write_incluster(self, directory: str | Path, *, namespace: str = "default") -> InCluster:
        """Write token, ca.crt and namespace files as a pod's service account has them.

        kubernetes_asyncio's ``load_incluster_config(token_filename=..., cert_filename=...)``
        reads them; ``InCluster.env`` holds KUBERNETES_SERVICE_HOST / _PORT.
        """
        if not self.tls:
            raise RuntimeError("in-cluster config is HTTPS only; start the double with tls=True")
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        token = d / "token"
        token.write_text(next(iter(sorted(self.tokens))) if self.tokens else "")
        ca = d / "ca.crt"
        ca.write_bytes(self.ca_pem)
        ns = d / "namespace"
        ns.write_text(namespace)
        env = {"KUBERNETES_SERVICE_HOST": LOCALHOST, "KUBERNETES_SERVICE_PORT": str(self.port)}
        return InCluster(env=env, token_path=token, ca_path=ca, namespace_path=ns)

    # ------------------------------------------------------------------ test controls

    def resource(self, group: str, plural: str, version: str | None = None) -> Resource:
        for r in self.resources:
            if r.group == group and r.plural == plural and version in (None, r.version):
                return r
        raise KeyError(f"{group}/{version or '*'}/{plural} is not served")

    def _resource_of(self, obj: Obj) -> Resource:
        api_version = obj.get("apiVersion", "")
        group, _, version = api_version.rpartition("/")
        for r in self.resources:
            if r.group == group and r.version == version and r.kind == obj.get("kind"):
                return r
        raise KeyError(f"{api_version} {obj.get('kind')} is not served")

    @property
    def resource_version(self) -> int:
        with self._lock:
            return self._rv

    def create(self, obj: Obj) -> Obj:
        """Create ``obj`` (status kept, unlike an HTTP create); returns the stored copy.

        Here and below, a namespaced object without a namespace is in "default", and
        returned objects carry the ``apiVersion`` of the resource's first served version.
        """
        res = self._resource_of(obj)
        ns = obj.get("metadata", {}).get("namespace")
        return self._out(res, self._create(res, self._ns(res, ns), obj, keep_status=True))

    def update(self, obj: Obj) -> Obj:
        """Replace ``obj`` (spec and status) without a resourceVersion check."""
        res = self._resource_of(obj)
        meta = obj.get("metadata", {})
        body = copy.deepcopy(obj)
        body["metadata"].pop("resourceVersion", None)
        ns = self._ns(res, meta.get("namespace"))
        return self._out(res, self._update(res, ns, meta["name"], body, part="all"))

    def patch(
        self, group: str, plural: str, name: str, patch: Obj, *, namespace: str | None = None
    ) -> Obj:
        """Merge-patch an object (all of it, status included)."""
        res = self.resource(group, plural)
        ns = self._ns(res, namespace)
        with self._lock:
            new = merge_patch(self._get(res, ns, name), patch)
            return self._out(res, self._update(res, ns, name, new, part="all"))

    def patch_status(
        self, group: str, plural: str, name: str, status: Obj, *, namespace: str | None = None
    ) -> Obj:
        """Merge-patch ``.status`` of an object."""
        return self.patch(group, plural, name, {"status": status}, namespace=namespace)

    def delete(self, group: str, plural: str, name: str, *, namespace: str | None = None) -> Obj:
        res = self.resource(group, plural)
        return self._out(res, self._delete(res, self._ns(res, namespace), name, None))

    def get(self, group: str, plural: str, name: str, *, namespace: str | None = None) -> Obj:
        res = self.resource(group, plural)
        with self._lock:
            return self._out(res, copy.deepcopy(self._get(res, self._ns(res, namespace), name)))

    def try_get(
        self, group: str, plural: str, name: str, *, namespace: str | None = None
    ) -> Obj | None:
        try:
            return self.get(group, plural, name, namespace=namespace)
        except ApiError:
            return None

    def list_objects(self, group: str, plural: str, *, namespace: str | None = None) -> list[Obj]:
        """Every stored object of a resource (in all namespaces unless one is given)."""
        res = self.resource(group, plural)
        with self._lock:
            return [
                self._out(res, copy.deepcopy(o))
                for (ns, _), o in sorted(self._bucket(res).items())
                if namespace is None or ns == namespace
            ]

    @staticmethod
    def _ns(res: Resource, namespace: str | None) -> str:
        if not res.namespaced:
            return ""
        return "default" if namespace is None else namespace

    def wait_for_object(
        self,
        group: str,
        plural: str,
        name: str,
        condition: Callable[[Obj], Any],
        *,
        namespace: str | None = None,
        within: float = 5.0,
    ) -> Obj:
        """Block until the object exists and ``condition(obj)`` is truthy; returns it.

        For example, until gatewayd has written a Gateway's status::

            api.wait_for_object(GATEWAY_GROUP, "gateways", "gw", namespace="default",
                                condition=lambda o: o.get("status", {}).get("conditions"))
        """

        def check() -> Obj | None:
            obj = self.try_get(group, plural, name, namespace=namespace)
            return obj if obj is not None and condition(obj) else None

        found = self.wait_for(check, within)
        assert found is not None
        return found

    def expire_history(self) -> None:
        """Forget every past event: a watch from an older resourceVersion gets 410 Expired."""
        with self._lock:
            self._history.clear()
            self._compacted = self._rv

    def drop_watches(self) -> None:
        """Close every open watch connection abruptly (no final chunk), as a crash would."""
        self._on_loop(self._abort_watches)

    def end_watches(self) -> None:
        """End every open watch stream cleanly, as the server's watch timeout does."""

        def end() -> None:
            with self._lock:
                for w in self._watches:
                    w.ended = True
                    w.wake.set()

        self._on_loop(end)

    def _abort_watches(self) -> None:
        with self._lock:
            watches = list(self._watches)
        for w in watches:
            w.ended = True
            w.wake.set()
            if w.response is not None and w.response._payload_writer is not None:
                transport = w.response._payload_writer.transport
                if transport is not None:
                    transport.abort()

    @property
    def open_connections(self) -> int:
        """Client connections the server holds open (keep-alive ones included)."""
        runner = self._runner
        server = runner.server if runner is not None else None
        return len(server.connections) if server is not None else 0

    @property
    def open_watches(self) -> int:
        with self._lock:
            return len(self._watches)

    def set_unavailable(self, mode: str | None) -> None:
        """Mode "503": answer 503 ServiceUnavailable; "refuse": stop listening; None: serve."""
        if mode not in (None, "503", "refuse"):
            raise ValueError(f"unknown mode {mode!r}")
        previous, self._unavailable = self._unavailable, mode

        async def apply() -> None:
            if mode is not None:
                self._abort_watches()
            if mode == "refuse" and previous != "refuse" and self._site is not None:
                # Close the listening socket only; the runner stays up to listen again.
                await self._site.stop()
                self._site = None
            if mode != "refuse" and previous == "refuse":
                await self._listen()

        self._on_loop(apply)

    def pause(self) -> None:
        """Hold every new request unanswered until :meth:`resume`."""

        def go() -> None:
            if self._paused is None or self._paused.is_set():
                self._paused = asyncio.Event()

        self._on_loop(go)

    def resume(self) -> None:
        def go() -> None:
            if self._paused is not None:
                self._paused.set()

        self._on_loop(go)

    # ------------------------------------------------------------------ the request log

    def requests(
        self,
        *,
        verb: str | None = None,
        method: str | None = None,
        path_contains: str | None = None,
        status: int | None = None,
        since: float | None = None,
    ) -> list[Request]:
        """Logged requests that match every given filter.

        ``verb`` in capitals is an HTTP method ("PATCH", "GET": list, watch, get and
        discovery alike); in lower case a Kubernetes verb ("get", "list", "watch",
        "create", "update", "patch", "delete", "deletecollection", "discovery").
        """
        with self._lock:
            log = list(self._log)
        out = []
        for r in log:
            if verb is not None and verb != (r.method if verb.isupper() else r.verb):
                continue
            if method is not None and r.method != method.upper():
                continue
            if path_contains is not None and path_contains not in r.path:
                continue
            if status is not None and r.status != status:
                continue
            if since is not None and r.time < since:
                continue
            out.append(r)
        return out

    def clear_requests(self) -> None:
        with self._lock:
            self._log.clear()

    def wait_for(self, condition: Callable[[], T], within: float = 5.0) -> T:
        """Block until ``condition()`` is truthy (re-checked at every request and change).

        Returns its value; raises TimeoutError after ``within`` seconds.
        """
        deadline = time.monotonic() + within
        with self._changed:
            while True:
                value = condition()
                if value:
                    return value
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"condition not met within {within} s")
                self._changed.wait(min(left, 0.1))

    async def async_wait_for(self, condition: Callable[[], T], within: float = 5.0) -> T:
        """:meth:`wait_for` for a coroutine: the event loop keeps running meanwhile."""
        deadline = time.monotonic() + within
        while True:
            value = condition()
            if value:
                return value
            if time.monotonic() >= deadline:
                raise TimeoutError(f"condition not met within {within} s")
            await asyncio.sleep(0.02)

    async def async_wait_disconnected(self, within: float = 5.0) -> None:
        """Wait until no client connection is open (call before an in-test loop closes).

        A kubernetes_asyncio watch stopped mid-stream closes its TLS connection
        gracefully: the close_notify exchange still runs when ``ApiClient`` is closed. If
        ``asyncio.run`` closes the loop first, the socket leaks (a ResourceWarning, an
        error under filterwarnings=error). Waiting here lets the exchange finish.
        """
        await self.async_wait_for(lambda: self.open_connections == 0, within)

    def _record(self, req: Request) -> None:
        with self._changed:
            self._log.append(req)
            self._changed.notify_all()

    # ------------------------------------------------------------------ the store

    def _bucket(self, res: Resource) -> dict[tuple[str, str], Obj]:
        return self._objects.setdefault((res.group, res.plural), {})

    def _get(self, res: Resource, ns: str, name: str) -> Obj:
        obj = self._bucket(res).get((ns if res.namespaced else "", name))
        if obj is None:
            raise _not_found(res, name)
        return obj

    def _commit(self, res: Resource, ns: str, type_: str, obj: Obj, old: Obj | None) -> None:
        """Record an event under the lock and wake watchers and waiters."""
        if len(self._history) == self._history.maxlen and self._history:
            self._compacted = self._history[0].rv
        self._history.append(
            _Event(self._rv, type_, (res.group, res.plural), ns, copy.deepcopy(obj), old)
        )
        self._changed.notify_all()
        loop = self._loop
        if loop is not None:
            for w in self._watches:
                if (w.res.group, w.res.plural) == (res.group, res.plural):
                    loop.call_soon_threadsafe(w.wake.set)

    def _create(self, res: Resource, ns: str, body: Obj, *, keep_status: bool) -> Obj:
        if not isinstance(body, dict) or not isinstance(body.get("metadata", {}), dict):
            raise ApiError(400, "BadRequest", "the body is not an object")
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        if not res.namespaced:
            ns = ""
            meta.pop("namespace", None)
        elif meta.get("namespace", ns) != ns:
            raise ApiError(
                400,
                "BadRequest",
                "the namespace of the provided object does not match the namespace sent "
                "on the request",
            )
        with self._lock:
            name = meta.get("name")
            if not name and meta.get("generateName"):
                name = meta["generateName"] + uuid.uuid4().hex[:5]
            if not name:
                raise ApiError(
                    422,
                    "Invalid",
                    f'{res.kind} "" is invalid: metadata.name: Required value: name or '
                    "generateName is required",
                )
            bucket = self._bucket(res)
            if (ns, name) in bucket:
                raise ApiError(
                    409,
                    "AlreadyExists",
                    f'{res.qualified} "{name}" already exists',
                    {"name": name, "group": res.group, "kind": res.plural},
                )
            self._rv += 1
            meta.update(
                name=name,
                uid=str(uuid.uuid4()),
                resourceVersion=str(self._rv),
                creationTimestamp=_now(),
                generation=1,
            )
            if res.namespaced:
                meta["namespace"] = ns
            for key in ("deletionTimestamp", "deletionGracePeriodSeconds", "selfLink"):
                meta.pop(key, None)
            obj["kind"] = res.kind
            obj.pop("apiVersion", None)
            if res.status and not keep_status:
                obj.pop("status", None)
            bucket[(ns, name)] = obj
            self._commit(res, ns, "ADDED", obj, None)
            return copy.deepcopy(obj)

    def _update(
        self,
        res: Resource,
        ns: str,
        name: str,
        body: Obj,
        *,
        part: str,  # "main": spec and metadata; "status": .status only; "all": both
        custom_needs_rv: bool = False,
    ) -> Obj:
        if not isinstance(body, dict) or not isinstance(body.get("metadata", {}), dict):
            raise ApiError(400, "BadRequest", "the body is not an object")
        ns = ns if res.namespaced else ""
        meta_in = body.get("metadata") or {}
        if meta_in.get("name", name) != name:
            raise ApiError(
                400,
                "BadRequest",
                f"the name of the object ({meta_in.get('name')}) does not match the name "
                f"on the URL ({name})",
            )
        with self._lock:
            cur = self._get(res, ns, name)
            want_rv = meta_in.get("resourceVersion")
            if want_rv in (None, "") and custom_needs_rv:
                raise ApiError(
                    422,
                    "Invalid",
                    f'{res.kind} "{name}" is invalid: metadata.resourceVersion: Invalid '
                    "value: 0x0: must be specified for an update",
                )
            if want_rv not in (None, "") and str(want_rv) != cur["metadata"]["resourceVersion"]:
                raise _conflict(res, name)
            if meta_in.get("uid") and meta_in["uid"] != cur["metadata"]["uid"]:
                raise ApiError(
                    409,
                    "Conflict",
                    f"Precondition failed: UID in precondition: {meta_in['uid']}, UID in "
                    f"object meta: {cur['metadata']['uid']}",
                )
            new = copy.deepcopy(body)
            new.pop("apiVersion", None)
            new["kind"] = res.kind
            if part == "status" and res.status:
                new = copy.deepcopy(cur)
                if "status" in body:
                    new["status"] = copy.deepcopy(body["status"])
                else:
                    new.pop("status", None)
            elif part == "main" and res.status:
                if "status" in cur:
                    new["status"] = copy.deepcopy(cur["status"])
                else:
                    new.pop("status", None)
            meta = new.setdefault("metadata", {})
            # System fields are the server's, whatever the body says.
            for key in ("uid", "creationTimestamp", "generation", "deletionTimestamp"):
                if key in cur["metadata"]:
                    meta[key] = cur["metadata"][key]
                else:
                    meta.pop(key, None)
            meta["name"] = name
            if res.namespaced:
                meta["namespace"] = ns
            else:
                meta.pop("namespace", None)
            meta.pop("resourceVersion", None)
            if new == _without_rv(cur):
                return copy.deepcopy(cur)  # a no-op write keeps the resourceVersion
            if _spec_of(new) != _spec_of(cur):
                meta["generation"] = int(cur["metadata"].get("generation", 1)) + 1
            self._rv += 1
            meta["resourceVersion"] = str(self._rv)
            bucket = self._bucket(res)
            if meta.get("deletionTimestamp") and not meta.get("finalizers"):
                del bucket[(ns, name)]
                self._commit(res, ns, "DELETED", new, cur)
            else:
                bucket[(ns, name)] = new
                self._commit(res, ns, "MODIFIED", new, cur)
            return copy.deepcopy(new)

    def _delete(self, res: Resource, ns: str, name: str, options: Obj | None) -> Obj:
        ns = ns if res.namespaced else ""
        with self._lock:
            cur = self._get(res, ns, name)
            pre = (options or {}).get("preconditions") or {}
            if (
                pre.get("resourceVersion")
                and pre["resourceVersion"] != cur["metadata"]["resourceVersion"]
            ):
                raise ApiError(
                    409,
                    "Conflict",
                    f"Precondition failed: ResourceVersion in precondition: "
                    f"{pre['resourceVersion']}, ResourceVersion in object meta: "
                    f"{cur['metadata']['resourceVersion']}",
                )
            if pre.get("uid") and pre["uid"] != cur["metadata"]["uid"]:
                raise ApiError(
                    409,
                    "Conflict",
                    f"Precondition failed: UID in precondition: {pre['uid']}, UID in "
                    f"object meta: {cur['metadata']['uid']}",
                )
            self._rv += 1
            if cur["metadata"].get("finalizers"):
                if cur["metadata"].get("deletionTimestamp"):
                    self._rv -= 1
                    return copy.deepcopy(cur)
                new = copy.deepcopy(cur)
                new["metadata"]["deletionTimestamp"] = _now()
                new["metadata"]["resourceVersion"] = str(self._rv)
                self._bucket(res)[(ns, name)] = new
                self._commit(res, ns, "MODIFIED", new, cur)
                return copy.deepcopy(new)
            gone = copy.deepcopy(cur)
            gone["metadata"]["resourceVersion"] = str(self._rv)
            del self._bucket(res)[(ns, name)]
            self._commit(res, ns, "DELETED", gone, cur)
            return copy.deepcopy(gone)

    # ------------------------------------------------------------------ HTTP

    def _out(self, res: Resource, obj: Obj) -> Obj:
        out = dict(obj)
        out["apiVersion"] = res.group_version
        out["kind"] = res.kind
        return out

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        query = dict(request.query)
        verb = _guess_verb(request.method, request.path, query)  # for requests that fail
        body: Any = None
        status: int | None = None
        try:
            if self._paused is not None and not self._paused.is_set():
                await self._paused.wait()
            if self._unavailable == "refuse" and request.transport is not None:
                # Connections opened before the listener closed are cut, too.
                request.transport.abort()
                raise ApiError(503, "ServiceUnavailable", "refused")
            try:
                raw = await request.read() if request.can_read_body else b""
            except web.HTTPRequestEntityTooLarge as exc:
                raise ApiError(
                    413, "RequestEntityTooLarge", f"Request entity too large: limit is {MAX_BODY}"
                ) from exc
            content_type = request.headers.get("Content-Type", "").split(";")[0].strip()
            if raw and ("json" in content_type or not content_type):
                try:
                    body = json.loads(raw)
                except ValueError as exc:
                    raise ApiError(400, "BadRequest", f"the body is not JSON: {exc}") from exc
            elif raw:
                body = raw.decode("utf-8", "replace")
            if self._unavailable == "503":
                raise ApiError(503, "ServiceUnavailable", "the server is currently unavailable")
            if self.tokens:
                auth = request.headers.get("Authorization", "")
                if not auth.startswith("Bearer ") or auth[7:] not in self.tokens:
                    raise ApiError(401, "Unauthorized", "Unauthorized")
            verb, response = await self._route(request, query, body, content_type)
            status = response.status
            return response
        except ApiError as err:
            status = err.code
            return web.json_response(err.status(), status=err.code)
        except Exception as exc:  # a bug of the double: kept for the test to see
            with self._lock:
                self.errors.append(repr(exc))
            status = 500
            failure = ApiError(500, "InternalError", f"apiserver double: {exc!r}")
            return web.json_response(failure.status(), status=500)
        finally:
            if id(request) in self._streaming:  # a watch is logged when its stream opens
                self._streaming.discard(id(request))
            else:
                self._record(_request_record(request, verb, query, body, status))

    async def _route(
        self, request: web.Request, query: dict[str, str], body: Any, content_type: str
    ) -> tuple[str, web.StreamResponse]:
        parts = [p for p in request.path.split("/") if p]
        method = request.method
        if method == "GET":
            disc = self._discovery(parts)
            if disc is not None:
                return "discovery", web.json_response(disc)
        if len(parts) >= 2 and parts[0] == "api":
            group, version, rest = "", parts[1], parts[2:]
        elif len(parts) >= 3 and parts[0] == "apis":
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise NO_RESOURCE
        ns: str | None = None
        if len(rest) >= 3 and rest[0] == "namespaces" and rest[2] not in ("status", "finalize"):
            ns, rest = rest[1], rest[2:]
        if not rest or len(rest) > 3:
            raise NO_RESOURCE
        res = self._by_path.get((group, version, rest[0]))
        if res is None or (ns is not None and not res.namespaced):
            raise NO_RESOURCE
        name = rest[1] if len(rest) >= 2 else None
        sub = rest[2] if len(rest) == 3 else None
        if sub is not None and (sub != "status" or not res.status):
            raise NO_RESOURCE
        if res.namespaced and name is not None and ns is None:
            raise NO_RESOURCE
        ns_key = ns or ""

        if name is None:
            if method == "GET":
                if _go_bool(query.get("watch")):
                    return "watch", await self._watch(request, res, ns, query)
                return "list", web.json_response(self._list(res, ns, query))
            if method == "POST":
                if ns is None and res.namespaced:
                    raise NO_RESOURCE
                obj = self._create(res, ns_key, body, keep_status=False)
                return "create", web.json_response(self._out(res, obj), status=201)
            if method == "DELETE":
                matches = self._matcher(res, query)
                with self._lock:
                    doomed = [
                        key
                        for key, o in sorted(self._bucket(res).items())
                        if (ns is None or key[0] == ns) and matches(o)
                    ]
                    gone = [self._out(res, self._delete(res, *key, None)) for key in doomed]
                    listed = {
                        "apiVersion": res.group_version,
                        "kind": f"{res.kind}List",
                        "metadata": {"resourceVersion": str(self._rv)},
                        "items": gone,
                    }
                return "deletecollection", web.json_response(listed)
            raise ApiError(405, "MethodNotAllowed", f"{method} is not supported on a collection")
        part = "status" if sub == "status" else "main"
        if method == "GET":
            with self._lock:
                obj = copy.deepcopy(self._get(res, ns_key, name))
            return "get", web.json_response(self._out(res, obj))
        if method == "PUT":
            obj = self._update(res, ns_key, name, body, part=part, custom_needs_rv=res.custom)
            return "update", web.json_response(self._out(res, obj))
        if method == "PATCH":
            obj = self._patch(res, ns_key, name, body, content_type, part)
            return "patch", web.json_response(self._out(res, obj))
        if method == "DELETE" and sub is None:
            obj = self._delete(res, ns_key, name, body if isinstance(body, dict) else None)
            return "delete", web.json_response(self._out(res, obj))
        raise ApiError(405, "MethodNotAllowed", f"{method} is not supported here")

    def _patch(
        self, res: Resource, ns: str, name: str, body: Any, content_type: str, part: str
    ) -> Obj:
        if content_type == APPLY_PATCH or (content_type == STRATEGIC_PATCH and res.custom):
            raise ApiError(
                415,
                "UnsupportedMediaType",
                f"the body of the request was in an unknown format - accepted media types "
                f"include: {JSON_PATCH}, {MERGE_PATCH}",
            )
        if content_type not in (MERGE_PATCH, STRATEGIC_PATCH, JSON_PATCH):
            raise ApiError(
                415,
                "UnsupportedMediaType",
                f"the body of the request was in an unknown format - accepted media types "
                f"include: {JSON_PATCH}, {MERGE_PATCH}, {STRATEGIC_PATCH}",
            )
        with self._lock:
            cur = self._out(res, copy.deepcopy(self._get(res, ns, name)))
            if content_type == JSON_PATCH:
                new = json_patch(cur, body)
                # A JSON patch carries no precondition unless it names one itself.
                if isinstance(new, dict) and isinstance(new.get("metadata"), dict):
                    patched_rv = new["metadata"].get("resourceVersion")
                    if patched_rv == cur["metadata"]["resourceVersion"]:
                        new["metadata"].pop("resourceVersion", None)
            else:
                if not isinstance(body, dict):
                    raise ApiError(400, "BadRequest", "a merge patch must be a JSON object")
                new = merge_patch(cur, body)
                rv_in_patch = (body.get("metadata") or {}).get("resourceVersion")
                new.setdefault("metadata", {})
                if rv_in_patch is None:
                    new["metadata"].pop("resourceVersion", None)
            return self._update(res, ns, name, new, part=part)

    def _list(self, res: Resource, ns: str | None, query: dict[str, str]) -> Obj:
        matches = self._matcher(res, query)
        rv_q = query.get("resourceVersion", "")
        match_q = query.get("resourceVersionMatch", "")
        if match_q and not rv_q:
            raise ApiError(
                422,
                "Invalid",
                "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden unless "
                "resourceVersion is provided",
            )
        if match_q not in ("", "Exact", "NotOlderThan"):
            raise ApiError(
                422,
                "Invalid",
                f'resourceVersionMatch: Unsupported value: "{match_q}": supported values: '
                '"Exact", "NotOlderThan"',
            )
        with self._lock:
            current = self._rv
            if rv_q not in ("", "0"):
                try:
                    wanted = int(rv_q)
                except ValueError as exc:
                    raise ApiError(400, "BadRequest", f"invalid resource version {rv_q!r}") from exc
                if match_q == "Exact" and wanted != current:
                    # The double keeps no snapshots: only the newest version is exact.
                    raise _expired("The resourceVersion for the provided list is too old.")
                if wanted > current:
                    raise ApiError(
                        504,
                        "Timeout",
                        f"Too large resource version: {wanted}, current: {current}",
                        {"causes": [{"reason": "ResourceVersionTooLarge"}], "retryAfterSeconds": 1},
                    )
            items = [
                self._out(res, copy.deepcopy(o))
                for (ons, _), o in sorted(self._bucket(res).items())
                if (ns is None or ons == ns) and matches(o)
            ]
        meta: Obj = {"resourceVersion": str(current)}
        limit = int(query.get("limit", "0") or 0)
        start = 0
        if query.get("continue"):
            try:
                token = json.loads(base64.urlsafe_b64decode(query["continue"]))
                start, token_rv = int(token["start"]), int(token["rv"])
            except (ValueError, KeyError, TypeError) as exc:
                raise ApiError(400, "BadRequest", "invalid continue token") from exc
            if token_rv < self._compacted:
                raise _expired(
                    "The provided continue parameter is too old to display a consistent list "
                    "result. You can start a new list without the continue parameter."
                )
        if limit > 0:
            page = items[start : start + limit]
            if start + limit < len(items):
                token = {"start": start + limit, "rv": current}
                meta["continue"] = base64.urlsafe_b64encode(json.dumps(token).encode()).decode()
                meta["remainingItemCount"] = len(items) - start - limit
            items = page
        else:
            items = items[start:]
        return {
            "apiVersion": res.group_version,
            "kind": f"{res.kind}List",
            "metadata": meta,
            "items": items,
        }

    def _matcher(self, res: Resource, query: dict[str, str]) -> Matcher:
        checks: list[Matcher] = []
        if query.get("labelSelector"):
            checks.append(label_matcher(query["labelSelector"]))
        if query.get("fieldSelector"):
            checks.append(field_matcher(query["fieldSelector"], res))
        return lambda obj: all(c(obj) for c in checks)

    async def _watch(
        self, request: web.Request, res: Resource, ns: str | None, query: dict[str, str]
    ) -> web.StreamResponse:
        matches = self._matcher(res, query)
        rv_q = query.get("resourceVersion", "")
        bookmarks = _go_bool(query.get("allowWatchBookmarks"))
        initial_end = _go_bool(query.get("sendInitialEvents"))
        if initial_end and (not bookmarks or query.get("resourceVersionMatch") != "NotOlderThan"):
            raise ApiError(
                422,
                "Invalid",
                "sendInitialEvents: Forbidden: sendInitialEvents requires "
                "allowWatchBookmarks=true and resourceVersionMatch=NotOlderThan",
            )
        timeout = float(query["timeoutSeconds"]) if query.get("timeoutSeconds") else None
        key = (res.group, res.plural)

        def wanted(ev_ns: str) -> bool:
            return ns is None or ev_ns == ns

        watch = _Watch(res, ns, matches, asyncio.Event())
        first: list[Obj] = []
        with self._lock:
            if len(self._watches) >= self.max_watches:
                raise ApiError(429, "TooManyRequests", "too many open watches")
            if rv_q in ("", "0") or initial_end:
                # The current state as synthetic ADDED events, then changes after it.
                cursor = self._rv
                first = [
                    {"type": "ADDED", "object": self._out(res, copy.deepcopy(o))}
                    for (ons, _), o in sorted(self._bucket(res).items())
                    if wanted(ons) and matches(o)
                ]
                expired = False
            else:
                try:
                    cursor = int(rv_q)
                except ValueError as exc:
                    raise ApiError(400, "BadRequest", f"invalid resource version {rv_q!r}") from exc
                expired = cursor < self._compacted
            self._watches.add(watch)
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        watch.response = resp
        try:
            await resp.prepare(request)
            self._record(_request_record(request, "watch", query, None, 200))
            self._streaming.add(id(request))
            if expired:
                err = _expired(f"too old resource version: {rv_q} ({self._compacted + 1})")
                await resp.write(_line({"type": "ERROR", "object": err.status()}))
                await resp.write_eof()
                return resp
            for added in first:
                await resp.write(_line(added))
            if initial_end:
                await resp.write(_line(self._bookmark(res, cursor, initial_end=True)))
            deadline = None if timeout is None else time.monotonic() + timeout
            next_bookmark = time.monotonic() + self.bookmark_interval
            while not watch.ended:
                watch.wake.clear()
                out: list[Obj] = []
                with self._lock:
                    if cursor < self._compacted:
                        err = _expired(f"too old resource version: {cursor} ({self._compacted})")
                        out.append({"type": "ERROR", "object": err.status()})
                        watch.ended = True
                    else:
                        for ev in self._history:
                            if ev.rv <= cursor:
                                continue
                            cursor = ev.rv
                            if ev.key != key or not wanted(ev.namespace):
                                continue
                            change = self._event_for(ev, matches)
                            if change is not None:
                                out.append({"type": change[0], "object": self._out(res, change[1])})
                for line in out:
                    await resp.write(_line(line))
                if watch.ended:
                    break
                now = time.monotonic()
                if bookmarks and now >= next_bookmark:
                    await resp.write(_line(self._bookmark(res, cursor)))
                    next_bookmark = now + self.bookmark_interval
                waits = [next_bookmark - now] if bookmarks else []
                if deadline is not None:
                    if now >= deadline:
                        break
                    waits.append(deadline - now)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(watch.wake.wait(), min(waits) if waits else None)
            if not resp.prepared or resp._payload_writer is None:
                return resp
            transport = resp._payload_writer.transport
            if transport is not None and not transport.is_closing():
                await resp.write_eof()
            return resp
        except ConnectionResetError:
            # The client went away, or drop_watches() aborted the connection.
            return resp
        except Exception as exc:  # a bug of the double, after the 200 went out
            with self._lock:
                self.errors.append(repr(exc))
            err = ApiError(500, "InternalError", f"apiserver double: {exc!r}")
            with contextlib.suppress(Exception):
                await resp.write(_line({"type": "ERROR", "object": err.status()}))
                await resp.write_eof()
            return resp
        finally:
            with self._lock:
                self._watches.discard(watch)

    def _event_for(self, ev: _Event, matches: Matcher) -> tuple[str, Obj] | None:
        now_in = matches(ev.obj)
        if ev.type == "ADDED":
            return ("ADDED", copy.deepcopy(ev.obj)) if now_in else None
        if ev.type == "DELETED":
            return ("DELETED", copy.deepcopy(ev.obj)) if now_in else None
        was_in = ev.old is not None and matches(ev.old)
        if now_in and was_in:
            return "MODIFIED", copy.deepcopy(ev.obj)
        if now_in:
            return "ADDED", copy.deepcopy(ev.obj)
        if was_in:
            return "DELETED", copy.deepcopy(ev.obj)
        return None

    def _bookmark(self, res: Resource, rv: int, *, initial_end: bool = False) -> Obj:
        meta: Obj = {"resourceVersion": str(rv)}
        if initial_end:
            meta["annotations"] = {"k8s.io/initial-events-end": "true"}
        return {
            "type": "BOOKMARK",
            "object": {"apiVersion": res.group_version, "kind": res.kind, "metadata": meta},
        }

    def _discovery(self, parts: list[str]) -> Obj | None:
        if parts == ["version"]:
            return dict(KUBE_VERSION)
        if parts == ["api"]:
            return {
                "kind": "APIVersions",
                "versions": ["v1"] if any(not r.group for r in self.resources) else [],
                "serverAddressByClientCIDRs": [
                    {"clientCIDR": "0.0.0.0/0", "serverAddress": f"{LOCALHOST}:{self.port}"}
                ],
            }
        if parts == ["api", "v1"]:
            return self._resource_list("", "v1")
        if parts == ["apis"]:
            names = dict.fromkeys(r.group for r in self.resources if r.group)
            groups = [self._group(group) for group in names]
            return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}
        if len(parts) == 2 and parts[0] == "apis":
            if not any(r.group == parts[1] for r in self.resources):
                raise NO_RESOURCE
            return {"kind": "APIGroup", "apiVersion": "v1", **self._group(parts[1])}
        if len(parts) == 3 and parts[0] == "apis":
            return self._resource_list(parts[1], parts[2])
        return None

    def _versions(self, group: str) -> list[str]:
        versions = list(dict.fromkeys(r.version for r in self.resources if r.group == group))
        return sorted(versions, key=_version_priority)

    def _group(self, group: str) -> Obj:
        versions = [{"groupVersion": f"{group}/{v}", "version": v} for v in self._versions(group)]
        return {"name": group, "versions": versions, "preferredVersion": versions[0]}

    def _resource_list(self, group: str, version: str) -> Obj:
        served = [r for r in self.resources if r.group == group and r.version == version]
        if not served:
            raise NO_RESOURCE
        resources: list[Obj] = []
        for r in served:
            entry: Obj = {
                "name": r.plural,
                "singularName": r.kind.lower(),
                "namespaced": r.namespaced,
                "kind": r.kind,
                "verbs": list(ALL_VERBS),
            }
            if r.short_names:
                entry["shortNames"] = list(r.short_names)
            resources.append(entry)
            if r.status:
                resources.append(
                    {
                        "name": f"{r.plural}/status",
                        "singularName": "",
                        "namespaced": r.namespaced,
                        "kind": r.kind,
                        "verbs": list(STATUS_VERBS),
                    }
                )
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": served[0].group_version,
            "resources": resources,
        }


def _guess_verb(method: str, path: str, query: Mapping[str, str]) -> str:
    """The Kubernetes verb of a request, from its method and path alone."""
    parts = [p for p in path.split("/") if p]
    if parts and parts[0] == "api":
        rest = parts[2:]
    elif parts and parts[0] == "apis":
        rest = parts[3:]
    else:
        rest = []
    if not rest:
        return "discovery" if method == "GET" else method.lower()
    if len(rest) >= 3 and rest[0] == "namespaces" and rest[2] not in ("status", "finalize"):
        rest = rest[2:]
    collection = len(rest) == 1
    if method == "GET":
        if _go_bool(query.get("watch")):
            return "watch"
        return "list" if collection else "get"
    if method == "DELETE" and collection:
        return "deletecollection"
    return _METHOD_VERBS.get(method, method.lower())


def _request_record(
    request: web.Request, verb: str, query: dict[str, str], body: Any, status: int | None
) -> Request:
    return Request(
        method=request.method,
        verb=verb,
        path=request.path,
        query=query,
        body=body,
        content_type=request.headers.get("Content-Type", ""),
        status=status,
    )


def _without_rv(obj: Obj) -> Obj:
    return {**obj, "metadata": {k: v for k, v in obj["metadata"].items() if k != "resourceVersion"}}


def _spec_of(obj: Obj) -> Obj:
    """Everything that bumps metadata.generation: all but metadata and status."""
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "apiVersion", "kind")}


def _version_priority(version: str) -> tuple[int, int, int]:
    """Kubernetes version order: GA before beta before alpha, higher numbers first."""
    m = re.fullmatch(r"v(\d+)(?:(alpha|beta)(\d+))?", version)
    if not m:
        return (3, 0, 0)
    level = {"": 0, "beta": 1, "alpha": 2}[m[2] or ""]
    return (level, -int(m[1]), -int(m[3] or 0))


def _go_bool(value: str | None) -> bool:
    """Query booleans as Go's strconv.ParseBool reads them (urlencode sends "True")."""
    return value in ("1", "t", "T", "true", "TRUE", "True")


def _line(event: Obj) -> bytes:
    return json.dumps(event, separators=(",", ":")).encode() + b"\n"


@contextlib.contextmanager
def running(**kwargs: Any) -> Iterator[ApiServerDouble]:
    """``with running(omit=[...]) as api:`` -- start a double, stop it afterwards."""
    double = ApiServerDouble(**kwargs)
    double.start()
    try:
        yield double
    finally:
        double.stop()
