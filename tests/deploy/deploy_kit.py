"""Reading deploy/ as ``kubectl apply -k`` would, without kubectl (none on the test
machines): an overlay's kustomization.yaml names resources (files, or directories with
their own kustomization.yaml) and patches; a patch is merged into the one object of the
same apiVersion, kind, namespace and name.  Only what deploy/ uses is implemented: a
kustomization using anything else fails the test instead of being half-read.
"""

from __future__ import annotations

import copy
import http.client
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

Doc = dict[str, Any]

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
OVERLAYS = ("node-local", "north-south")
EXAMPLES = DEPLOY / "examples"
GATEWAY_GROUP = "gateway.networking.k8s.io"
KUSTOMIZATION = "kustomization.yaml"
# The fields of a Kustomization that deploy/ uses; anything else is refused.
_KNOWN_FIELDS = frozenset({"apiVersion", "kind", "resources", "patches"})


def load_docs(path: Path) -> list[Doc]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert all(isinstance(d, dict) for d in docs), path
    return docs


def kustomization(directory: Path) -> Doc:
    (doc,) = load_docs(directory / KUSTOMIZATION)
    assert doc["kind"] == "Kustomization", directory
    unknown = set(doc) - _KNOWN_FIELDS
    assert not unknown, f"{directory}: kustomization fields this test cannot read: {unknown}"
    return doc


def identity(doc: Doc) -> tuple[str, str, str, str]:
    meta = doc["metadata"]
    return (doc["apiVersion"], doc["kind"], meta.get("namespace", ""), meta["name"])


def merge(base: Any, patch: Any) -> Any:
    """Strategic merge as far as deploy/'s patches need it: maps merge key by key,
    anything else (lists, scalars) is replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for key, value in patch.items():
            out[key] = merge(base[key], value) if key in base else copy.deepcopy(value)
        return out
    return copy.deepcopy(patch)


def referenced_files(directory: Path) -> Iterator[Path]:
    """Every file a kustomization reads, its own and its bases' (recursively)."""
    k = kustomization(directory)
    yield directory / KUSTOMIZATION
    for entry in k.get("resources", []):
        path = (directory / entry).resolve()
        if path.is_dir():
            yield from referenced_files(path)
        else:
            yield path
    for patch in k.get("patches", []):
        assert set(patch) == {"path"}, f"{directory}: only file patches are read: {patch}"
        yield (directory / patch["path"]).resolve()


def render(directory: Path) -> list[Doc]:
    """The objects ``kubectl kustomize directory`` would print (in resource order)."""
    k = kustomization(directory)
    out: list[Doc] = []
    for entry in k.get("resources", []):
        path = (directory / entry).resolve()
        assert path.exists(), f"{directory / KUSTOMIZATION}: {entry} does not exist"
        out.extend(render(path) if path.is_dir() else load_docs(path))
    ids = [identity(d) for d in out]
    assert len(ids) == len(set(ids)), f"{directory}: an object is defined twice"
    for patch in k.get("patches", []):
        (body,) = load_docs(directory / patch["path"])
        target = identity(body)
        assert target in ids, f"{directory}: patch {patch['path']} matches no object"
        i = ids.index(target)
        out[i] = merge(out[i], body)
    return out


def find(docs: list[Doc], kind: str, name: str | None = None) -> Doc:
    (doc,) = (d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"]))
    return doc


def workload(overlay: str) -> Doc:
    docs = render(DEPLOY / overlay)
    (doc,) = (d for d in docs if d["kind"] in ("DaemonSet", "Deployment"))
    return doc


def container(doc: Doc) -> Doc:
    (c,) = doc["spec"]["template"]["spec"]["containers"]
    return c


def option(args: list[str], name: str) -> str | None:
    """The value of ``--name VALUE`` or ``--name=VALUE`` in ``args`` (None: absent)."""
    for i, arg in enumerate(args):
        if arg == name:
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def run_help_flags() -> set[str]:
    """The options ``gatewayd run --help`` prints, as a user would read them."""
    done = subprocess.run(
        [sys.executable, "-m", "gatewayd", "run", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", done.stdout))


def with_option(args: list[str], name: str, value: str) -> list[str]:
    """``args`` with ``--name``'s value replaced (or ``--name value`` added)."""
    out = list(args)
    for i, arg in enumerate(out):
        if arg == name:
            out[i + 1] = value
            return out
        if arg.startswith(name + "="):
            out[i] = f"{name}={value}"
            return out
    return [*out, name, value]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def get(port: int, path: str) -> tuple[int, bytes]:
    """(status, body) of a GET on 127.0.0.1:port; OSError when nothing answers."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()
