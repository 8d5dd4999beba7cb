from __future__ import annotations

import base64
import datetime as dt
import io
import subprocess
import sys

import pytest
import yaml

from gatewayd.tls.certs import load_keypair, matches_hostname
from gatewayd.tls.cli_cert import cert_main, default_secret_name


def _run(hosts: list[str], **kwargs: object) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = cert_main(hosts, out=out, err=err, **kwargs)  # type: ignore[arg-type]
    return code, out.getvalue(), err.getvalue()


def test_output_is_a_tls_secret_that_loads() -> None:
    code, out, err = _run(["www.example.com", "*.api.example.com"], name=None, namespace="web")
    assert (code, err) == (0, "")
    doc = yaml.safe_load(out)
    assert doc["apiVersion"] == "v1"
    assert doc["kind"] == "Secret"
    assert doc["type"] == "kubernetes.io/tls"
    assert doc["metadata"] == {"name": "www-example-com-tls", "namespace": "web"}
    info = load_keypair(
        base64.b64decode(doc["data"]["tls.crt"]),
        base64.b64decode(doc["data"]["tls.key"]),
        now=dt.datetime.now(dt.UTC),
    )
    assert info.dns_names == ("www.example.com", "*.api.example.com")
    assert matches_hostname(info, "v2.api.example.com")


def test_explicit_name() -> None:
    code, out, _ = _run(["a.example"], name="my-cert", namespace="default")
    assert code == 0
    assert yaml.safe_load(out)["metadata"]["name"] == "my-cert"


@pytest.mark.parametrize(
    ("host", "name"),
    [
        ("www.example.com", "www-example-com-tls"),
        ("*.Example.com.", "wildcard-example-com-tls"),
        ("10.0.0.1", "10-0-0-1-tls"),
        ("::1", "1-tls"),
    ],
)
def test_default_secret_name(host: str, name: str) -> None:
    assert default_secret_name(host) == name


@pytest.mark.parametrize(
    ("hosts", "name", "namespace", "message"),
    [
        ([], None, "default", "at least one --host"),
        (["bad host"], None, "default", "--host 'bad host': not a DNS name"),
        (["a.*.example"], None, "default", "not a DNS name"),
        (["a.example"], "Bad_Name", "default", "Secret name 'Bad_Name'"),
        (["a.example"], None, "Not.A.Label", "namespace 'Not.A.Label'"),
    ],
)
def test_errors_go_to_stderr_with_exit_2(
    hosts: list[str], name: str | None, namespace: str, message: str
) -> None:
    code, out, err = _run(hosts, name=name, namespace=namespace)
    assert code == 2
    assert out == ""
    assert message in err


def test_module_entry_point() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "gatewayd.tls.cli_cert", "--host", "a.example", "--namespace", "x"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    doc = yaml.safe_load(proc.stdout)
    assert doc["metadata"] == {"name": "a-example-tls", "namespace": "x"}
