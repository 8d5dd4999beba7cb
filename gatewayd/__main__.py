"""``python -m gatewayd`` and the ``gatewayd`` console script (``main``).

Kept tiny on purpose: a ``--workers N`` worker is a spawned interpreter, and
multiprocessing runs the parent's main script again in it (as ``__mp_main__``).  The
console script does ``from gatewayd.__main__ import main``; were that ``gatewayd.cli``, every
worker would import the command line and the whole configuration pipeline (about 4.5 MB
of RSS per worker) that only the supervisor uses.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    from gatewayd.cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
