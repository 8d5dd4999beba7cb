"""Listener ``tls.options``: the keys gatewayd implements, and what it refuses.

"Options are a list of key/value pairs to enable extended TLS configuration for each
implementation ... Support: Implementation-specific" (GatewayTLSConfig.Options).
gatewayd reads three keys, all under its own domain prefix:

================================  ===========================================  =========
key                               value                                        default
================================  ===========================================  =========
``gatewayd.io/min-tls-version``   ``1.2`` or ``1.3``                           ``1.2``
``gatewayd.io/max-tls-version``   ``1.2`` or ``1.3``                           ``1.3``
``gatewayd.io/cipher-suites``     TLS 1.2 suites, ``:`` or ``,`` separated,    the six
                                  among the six of ``TLS12_CIPHERS``           suites
================================  ===========================================  =========

Anything else (another key, a value outside these, a minimum above the maximum) makes
the listener ``Accepted: False`` (UnsupportedValue) with every offending key in the
message, and it is not served: serving it without an option could weaken TLS the user
hardened.  Cipher suites can only be narrowed (no suite weaker than the defaults:
ECDHE with AEAD); TLS 1.3 suites are OpenSSL's, which Python cannot change.

TLS versions and suites belong to the TLS connection before the ClientHello's server
name picks a listener, so they are per port: listeners terminating TLS on one port
must carry the same options (``port_conflicts``).

Pure module: no I/O, no ``ssl`` import (the names are checked against a fixed table).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from gatewayd.routing.snapshot.rules import TLSOptions

PREFIX: Final = "gatewayd.io/"
MIN_VERSION: Final = PREFIX + "min-tls-version"
MAX_VERSION: Final = PREFIX + "max-tls-version"
CIPHER_SUITES: Final = PREFIX + "cipher-suites"
KNOWN_KEYS: Final = (CIPHER_SUITES, MAX_VERSION, MIN_VERSION)
VERSIONS: Final = ("1.2", "1.3")
# The TLS 1.2 suites a listener may offer: gatewayd/tls/context.py TLS12_CIPHERS (a
# test keeps the two equal).
TLS12_SUITES: Final = (
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-CHACHA20-POLY1305",
)


def parse_tls_options(
    options: Sequence[tuple[str, str]],
) -> tuple[TLSOptions | None, list[str]]:
    """The options gatewayd applies (None when there are none), and one problem per
    key it cannot honour, naming the key."""
    if not options:
        return None, []
    values = dict(options)
    problems = [
        f"{key}: not a key gatewayd implements (known: {', '.join(KNOWN_KEYS)})"
        for key in sorted(values)
        if key not in KNOWN_KEYS
    ]
    low = values.get(MIN_VERSION, "1.2").strip()
    high = values.get(MAX_VERSION, "1.3").strip()
    for key, value in ((MIN_VERSION, low), (MAX_VERSION, high)):
        if value not in VERSIONS:
            problems.append(f"{key}: {value!r} is not one of {', '.join(VERSIONS)}")
    if low in VERSIONS and high in VERSIONS and low > high:
        problems.append(f"{MIN_VERSION} {low} is above {MAX_VERSION} {high}")
    ciphers: tuple[str, ...] = ()
    text = values.get(CIPHER_SUITES)
    if text is not None:
        names = [n.strip() for n in text.replace(",", ":").split(":") if n.strip()]
        unknown = [n for n in names if n not in TLS12_SUITES]
        if unknown or not names:
            problems.append(
                f"{CIPHER_SUITES}: {', '.join(unknown) or 'no suite'} not among the "
                f"suites gatewayd offers ({', '.join(TLS12_SUITES)})"
            )
        elif low == "1.3":
            problems.append(f"{CIPHER_SUITES}: TLS 1.2 suites with {MIN_VERSION} 1.3")
        ciphers = tuple(dict.fromkeys(names))
    if problems:
        return None, problems
    return TLSOptions(min_version=low, max_version=high, ciphers=ciphers), []


def describe(options: TLSOptions | None) -> str:
    if options is None:
        return "the defaults (no tls.options)"
    shown = f"TLS {options.min_version}-{options.max_version}"
    if options.ciphers:
        shown += f", suites {':'.join(options.ciphers)}"
    return shown
