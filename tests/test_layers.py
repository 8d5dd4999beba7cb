"""The import layers of gatewayd, checked on the source with ``ast`` (STYLE.md).

(a) routing/ is pure: it never imports I/O, clock or randomness modules.
(b) The routing stages import downwards only: compile -> control -> config, every stage
    -> snapshot, snapshot -> nothing above it.  proxy/ and tls/ read the routing package
    through routing.snapshot alone.  Exceptions are listed below, each with its reason.
(c) No import cycle among gatewayd modules at all: every import counts, at module level
    and inside functions; only imports under ``if TYPE_CHECKING:`` (annotations, never
    executed) are left out of the cycle check.  They still obey the layers of (b).

The checker takes any package root, so the self-tests plant violations in a throw-away
package and prove each rule sees them.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

import pytest

GATEWAYD = Path(__file__).resolve().parents[1] / "gatewayd"

# (a) Modules routing/ must never import (the top-level name is compared).
FORBIDDEN_IN_ROUTING = frozenset(
    {"asyncio", "socket", "ssl", "time", "random", "subprocess", "selectors", "uvloop"}
)

# (b) What a layer may import from the package, as prefixes relative to the package root.
# A module matches the longest layer prefix it starts with; modules outside every layer
# are unrestricted (cli, daemon, pipeline, ...).  "" on the right means "anything".
LAYERS: dict[str, tuple[str, ...]] = {
    "routing.snapshot": ("routing.snapshot",),
    "routing.config": ("routing.config",),
    "routing.control": ("routing.config", "routing.control", "routing.snapshot"),
    "routing.compile": (
        "routing.config",
        "routing.control",
        "routing.compile",
        "routing.snapshot",
    ),
    # The data plane: anything outside routing/, and of routing/ the snapshot only.
    "proxy": ("proxy", "tls", "tproxy", "routing.snapshot"),
    "tls": ("tls", "routing.snapshot"),
}


@dataclass(frozen=True)
class Allowed:
    importer: str  # module (relative to the package root), or a layer prefix
    target: str  # module imported (relative to the package root)
    reason: str
    type_checking_only: bool = False


# Each one names why it is not a violation.  Adding one needs a reason as good.
EXCEPTIONS: tuple[Allowed, ...] = (
    Allowed(
        "routing.snapshot",
        "tls.certs",
        "TerminateTLS, TLSListener and ListenerBinding carry tls.certs.CertificateInfo "
        "(annotations only); tls.certs imports nothing from routing",
        type_checking_only=True,
    ),
    Allowed(
        "routing.config",
        "routing.snapshot.frozen",
        "fast_init, the model's faster frozen-dataclass __init__, is shared by every stage "
        "and sits in the lowest one; it imports nothing of gatewayd",
    ),
    Allowed(
        "routing.control",
        "tls.certs",
        "the control stage checks key pairs and CA bundles (Listener ResolvedRefs, "
        "BackendTLSPolicy) with tls.certs, which takes PEM bytes and imports no routing",
    ),
)


@dataclass(frozen=True)
class Import:
    target: str  # a module of the package (relative name), or an outside top-level name
    internal: bool
    line: int
    type_checking: bool
    in_function: bool


@dataclass
class Module:
    name: str  # relative to the package root ("routing.snapshot.table"); "" = the root
    path: Path
    imports: list[Import] = field(default_factory=list)


def _module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


class _Collector(ast.NodeVisitor):
    def __init__(self, package: str, module: str, is_package: bool, known: set[str]) -> None:
        self.package = package
        self.module = module
        self.is_package = is_package
        self.known = known
        self.found: list[Import] = []
        self._tc = 0
        self._fn = 0

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            self._tc += 1
            for child in node.body:
                self.visit(child)
            self._tc -= 1
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)

    def _function(self, node: ast.AST) -> None:
        self._fn += 1
        self.generic_visit(node)
        self._fn -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, node.lineno)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = node.module or ""
        if node.level:
            # Relative import: resolve against this module's package.
            here = self.module.split(".") if self.module else []
            if not self.is_package:
                here = here[:-1]
            here = here[: len(here) - (node.level - 1)]
            base = ".".join([self.package, *here, *([base] if base else [])])
        for alias in node.names:
            # "from pkg import sub" imports the submodule when there is one.
            full = f"{base}.{alias.name}"
            self._add(full if self._relative(full) in self.known else base, node.lineno)

    def _relative(self, dotted: str) -> str | None:
        if dotted == self.package:
            return ""
        if dotted.startswith(self.package + "."):
            return dotted[len(self.package) + 1 :]
        return None

    def _add(self, dotted: str, line: int) -> None:
        rel = self._relative(dotted)
        if rel is None:
            target, internal = dotted.split(".")[0], False
        else:
            # The longest known module the name starts with ("a.b.Name" -> "a.b").
            while rel not in self.known and "." in rel:
                rel = rel.rpartition(".")[0]
            target, internal = rel, True
        self.found.append(Import(target, internal, line, self._tc > 0, self._fn > 0))


def scan(root: Path) -> dict[str, Module]:
    """Every module under ``root`` (a package directory) with what it imports."""
    package = root.name
    paths = sorted(root.rglob("*.py"))
    known = {_module_name(root, p) for p in paths}
    out: dict[str, Module] = {}
    for path in paths:
        name = _module_name(root, path)
        tree = ast.parse(path.read_text(), filename=str(path))
        collector = _Collector(package, name, path.name == "__init__.py", known)
        collector.visit(tree)
        out[name] = Module(name, path, collector.found)
    return out


def _within(name: str, prefix: str) -> bool:
    return prefix == "" or name == prefix or name.startswith(prefix + ".")


def _layer(name: str) -> str | None:
    best = None
    for prefix in LAYERS:
        if _within(name, prefix) and (best is None or len(prefix) > len(best)):
            best = prefix
    return best


def _excepted(module: str, imp: Import, exceptions: tuple[Allowed, ...]) -> bool:
    return any(
        _within(module, e.importer)
        and _within(imp.target, e.target)
        and (imp.type_checking or not e.type_checking_only)
        for e in exceptions
    )


def purity_violations(modules: dict[str, Module]) -> list[str]:
    return [
        f"{m.name}:{imp.line} imports {imp.target}"
        for m in modules.values()
        if _within(m.name, "routing")
        for imp in m.imports
        if not imp.internal and imp.target in FORBIDDEN_IN_ROUTING
    ]


def layer_violations(
    modules: dict[str, Module], exceptions: tuple[Allowed, ...] = EXCEPTIONS
) -> list[str]:
    out: list[str] = []
    for m in modules.values():
        layer = _layer(m.name)
        if layer is None:
            continue
        allowed = LAYERS[layer]
        for imp in m.imports:
            if not imp.internal or imp.target == "":
                continue
            if layer in ("proxy", "tls") and not _within(imp.target, "routing"):
                continue  # the data plane may use anything outside routing/
            if any(_within(imp.target, a) for a in allowed):
                continue
            if _excepted(m.name, imp, exceptions):
                continue
            out.append(f"{m.name}:{imp.line} ({layer}) imports {imp.target}")
    return out


def import_cycles(modules: dict[str, Module], *, type_checking: bool = False) -> list[list[str]]:
    """Strongly connected components of more than one module (or a module importing
    itself), over every import that runs: module level and inside functions.
    ``type_checking``: count the imports under ``if TYPE_CHECKING:`` too."""
    graph: dict[str, set[str]] = {
        m.name: {
            i.target for i in m.imports if i.internal and (type_checking or not i.type_checking)
        }
        for m in modules.values()
    }
    # Tarjan's algorithm, iterative (no recursion limit on deep chains).
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    sccs: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work: list[tuple[str, list[str]]] = [(start, sorted(graph[start]))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, todo = work[-1]
            if todo:
                nxt = todo.pop()
                if nxt not in graph:
                    continue
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, sorted(graph[nxt])))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                scc: list[str] = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    scc.append(top)
                    if top == node:
                        break
                if len(scc) > 1 or node in graph[node]:
                    sccs.append(sorted(scc))
    return sccs


# --------------------------------------------------------------------------- gatewayd


@pytest.fixture(scope="module")
def gatewayd_modules() -> dict[str, Module]:
    return scan(GATEWAYD)


def test_routing_imports_no_io(gatewayd_modules: dict[str, Module]) -> None:
    assert any(_within(name, "routing.snapshot") for name in gatewayd_modules)
    assert purity_violations(gatewayd_modules) == []


def test_layers_import_downwards_only(gatewayd_modules: dict[str, Module]) -> None:
    assert layer_violations(gatewayd_modules) == []


def test_every_exception_is_still_needed(gatewayd_modules: dict[str, Module]) -> None:
    # An exception nothing uses any more is deleted, not kept "just in case".
    for exc in EXCEPTIONS:
        others = tuple(e for e in EXCEPTIONS if e is not exc)
        assert layer_violations(gatewayd_modules, others), f"unused exception: {exc}"


def test_no_import_cycles(gatewayd_modules: dict[str, Module]) -> None:
    assert import_cycles(gatewayd_modules) == []


def test_routing_and_tls_have_no_cycles_even_in_annotations(
    gatewayd_modules: dict[str, Module],
) -> None:
    # Stricter where it is cheap to be: the snapshot types reference each other only
    # downwards (rules <- table <- compiled), so even annotation-only imports are acyclic.
    pure = {
        name: m
        for name, m in gatewayd_modules.items()
        if _within(name, "routing") or _within(name, "tls")
    }
    assert import_cycles(pure, type_checking=True) == []


def test_every_routing_module_is_in_a_stage(gatewayd_modules: dict[str, Module]) -> None:
    loose = [
        name
        for name in gatewayd_modules
        if _within(name, "routing") and name != "routing" and _layer(name) is None
    ]
    assert loose == []


# --------------------------------------------------------------------------- self-tests


def _plant(root: Path, files: dict[str, str]) -> dict[str, Module]:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for directory in [root, *[p for p in root.rglob("*") if p.is_dir()]]:
        (directory / "__init__.py").touch()
    return scan(root)


def test_checker_sees_planted_violations(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    modules = _plant(
        pkg,
        {
            "routing/snapshot/table.py": "from pkg.routing.control.resolve import x\n",
            "routing/config/model.py": "import time\n",
            "routing/control/resolve.py": (
                "from pkg.routing.compile import compiler\nfrom . import conditions\n"
            ),
            "routing/control/conditions.py": "",
            "routing/compile/compiler.py": "",
            "proxy/server.py": (
                "from pkg.routing.snapshot.table import T\nfrom pkg.routing.config.model import M\n"
            ),
            "tls/certs.py": "import ssl\nfrom pkg.routing.snapshot import table\n",
        },
    )
    # from-import of a submodule, relative import, attribute names are resolved.
    resolve_imports = {i.target for i in modules["routing.control.resolve"].imports}
    assert resolve_imports == {"routing.compile.compiler", "routing.control.conditions"}
    assert purity_violations(modules) == ["routing.config.model:1 imports time"]
    assert sorted(layer_violations(modules, ())) == [
        "proxy.server:2 (proxy) imports routing.config.model",
        "routing.control.resolve:1 (routing.control) imports routing.compile.compiler",
        "routing.snapshot.table:1 (routing.snapshot) imports routing.control.resolve",
    ]


def test_checker_exceptions_need_type_checking_when_declared(tmp_path: Path) -> None:
    modules = _plant(
        tmp_path / "pkg",
        {
            "routing/snapshot/a.py": (
                "from typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n    from pkg.tls.certs import C\n"
            ),
            "routing/snapshot/b.py": "from pkg.tls.certs import C\n",
            "tls/certs.py": "",
        },
    )
    assert layer_violations(modules) == [
        "routing.snapshot.b:1 (routing.snapshot) imports tls.certs"
    ]


def test_checker_finds_cycles_through_functions_not_type_checking(tmp_path: Path) -> None:
    modules = _plant(
        tmp_path / "pkg",
        {
            "a.py": "import pkg.b\n",
            "b.py": "def f():\n    from pkg import c\n",
            "c.py": "from pkg.a import x\n",
            "d.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg.e\n",
            "e.py": "import pkg.d\n",
            "f.py": "import pkg.f\n",
        },
    )
    assert modules["b"].imports[0].in_function
    assert import_cycles(modules) == [["a", "b", "c"], ["f"]]
    assert import_cycles(modules, type_checking=True) == [["a", "b", "c"], ["d", "e"], ["f"]]
