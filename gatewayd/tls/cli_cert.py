"""``gatewayd cert``: a self-signed certificate as a kubernetes.io/tls Secret manifest.

    gatewayd cert --host www.example.com [--host NAME ...] [--namespace NS] [--name NAME]

The manifest goes to stdout (``> secret.yaml``); problems go to stderr with exit code 2.
"""

from __future__ import annotations

import argparse
import ipaddress
import re
import sys
from collections.abc import Sequence
from typing import TextIO

from gatewayd.tls.certs import secret_manifest, self_signed

__all__ = ["add_cert_arguments", "cert_main", "default_secret_name", "main"]

# A DNS name (RFC 1123 labels), optionally with a Gateway-style wildcard first label.
_HOST = re.compile(
    r"(\*\.)?[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*",
    re.IGNORECASE,
)


def default_secret_name(host: str) -> str:
    """``www.example.com`` -> ``www-example-com-tls``; ``*.example.com`` ->
    ``wildcard-example-com-tls``; ``10.0.0.1`` -> ``10-0-0-1-tls``."""
    base = host.strip().lower().rstrip(".")
    if base.startswith("*."):
        base = "wildcard." + base[2:]
    base = re.sub(r"[^a-z0-9]+", "-", base).strip("-")
    # metadata.name is a DNS subdomain (<= 253); keep room for the suffix.
    return (base[:240].rstrip("-") or "gatewayd") + "-tls"


def _check_host(host: str) -> str | None:
    if not host:
        return "--host: empty host name"
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return None
    if len(host.rstrip(".")) > 253 or not _HOST.fullmatch(host.rstrip(".")):
        return f"--host {host!r}: not a DNS name (letters, digits, '-', '.'; '*.' first)"
    return None


def cert_main(
    hosts: Sequence[str],
    *,
    name: str | None,
    namespace: str,
    out: TextIO,
    err: TextIO | None = None,
    days: int = 365,
    key_type: str = "ec",
) -> int:
    """Write a self-signed certificate for ``hosts`` as a Secret manifest to ``out``."""
    errors = err if err is not None else sys.stderr
    if not hosts:
        print("gatewayd cert: at least one --host is required", file=errors)
        return 2
    for host in hosts:
        problem = _check_host(host)
        if problem is not None:
            print(f"gatewayd cert: {problem}", file=errors)
            return 2
    secret_name = name if name is not None else default_secret_name(hosts[0])
    try:
        cert_pem, key_pem = self_signed(hosts, days=days, key_type=key_type)
        manifest = secret_manifest(cert_pem, key_pem, name=secret_name, namespace=namespace)
    except ValueError as exc:
        print(f"gatewayd cert: {exc}", file=errors)
        return 2
    out.write(manifest)
    return 0


def add_cert_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``cert`` sub-command's options, for the main CLI's sub-parser."""
    parser.add_argument(
        "--host",
        action="append",
        required=True,
        dest="hosts",
        metavar="NAME",
        help="DNS name (or *.wildcard, or IP address) for the subjectAltName; repeatable",
    )
    parser.add_argument("--name", default=None, help="Secret name (default: from the host)")
    parser.add_argument("--namespace", default="default")
    parser.add_argument("--days", type=int, default=365, help="validity (default: 365)")
    parser.add_argument("--key-type", choices=("ec", "rsa", "ed25519"), default="ec")


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry: ``python -m gatewayd.tls.cli_cert --host ...``."""
    parser = argparse.ArgumentParser(
        prog="gatewayd cert",
        description="Print a self-signed certificate as a kubernetes.io/tls Secret.",
    )
    add_cert_arguments(parser)
    args = parser.parse_args(argv)
    return cert_main(
        args.hosts,
        name=args.name,
        namespace=args.namespace,
        out=sys.stdout,
        days=args.days,
        key_type=args.key_type,
    )


if __name__ == "__main__":
    sys.exit(main())
