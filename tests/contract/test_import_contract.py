"""What each process may load: the cron tick and the resident supervisor of a plain job import the
standard library and our own code only. Cron may start the tick every minute and the resident stays
beside the daemon for its whole life, so a third-party import there costs every user, every minute.
The farm's run path too: the CLI stack alone would cost more than GNU parallel's whole start.

Checked at run time, in a fresh isolated interpreter (`-I -S`, as cron's line and the launcher's exec
start them), so a lazy import reached on the way is caught too. Then statically, on the package's import
graph (read with `ast`): no import cycle, no module importing a layer above its own, the tick and the
resident never reaching the CLI side, the farm never importing the tick or the resident.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
# Third-party packages the CLI, the farm or a cluster job may load, and the tick and plain resident never.
FORBIDDEN = ("typer", "click", "rich", "crontab", "fasteners", "tomli", "tomli_w", "tomlkit", "psycopg",
             "pydantic", "argparse")


def _loaded_after(code: str) -> list[str]:
    """Top-level module names loaded by a fresh `python -I -S` that runs CODE with our package importable."""
    import watchdog_singleton

    parent = os.path.dirname(os.path.dirname(os.path.abspath(watchdog_singleton.__file__)))
    probe = (f"import sys; sys.path.insert(0, {parent!r}); {code}; import json; "
             "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))")
    proc = subprocess.run([sys.executable, "-I", "-S", "-c", probe], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    loaded: list[str] = json.loads(proc.stdout.splitlines()[-1])
    return loaded


@pytest.mark.parametrize("what,code", [
    ("the tick", "from watchdog_singleton.tick import launch, runargs; runargs.parse(['web', '--detach', '--', 'x'])"),
    ("the resident supervisor", "from watchdog_singleton.supervisor import core, logsink, pump, resident; "
     "from watchdog_singleton.proc import spawn"),
    ("the shared resident", "from watchdog_singleton.supervisor import house, housemain, housewire; "
     "from watchdog_singleton.tick import handover"),
    ("the entry point before dispatch", "from watchdog_singleton import __main__"),
    ("the farm's run path", "from watchdog_singleton.cli import farmargs; from watchdog_singleton.farm import workers; "
                            "farmargs.parse(['tasks.txt', '-n', '8'])"),
])
def test_the_tick_and_the_resident_load_no_third_party_module(what: str, code: str) -> None:
    loaded = _loaded_after(code)
    assert not [m for m in FORBIDDEN if m in loaded], f"{what} loads {[m for m in FORBIDDEN if m in loaded]}"


def test_the_contract_can_fail() -> None:
    """The probe sees a forbidden import when there is one (so the test above is not vacuous)."""
    assert "argparse" in _loaded_after("import argparse")


# ---- the static contract: the import graph of our own modules ----------------------------------------
#
# Every `import` our modules run, at module level or inside a function (a lazy import is still a
# dependency: it runs the first time that path is taken), and not those under `if TYPE_CHECKING:`,
# which never run. Importing `a.b` also runs `a/__init__`; that implicit edge is not counted (every
# submodule has it), so a package's __init__ that imports its own engines is a cycle, and one that
# only defines the interface its engines import is not.

PACKAGE = "watchdog_singleton"

# Layers, highest first, by module name prefix (as far as the flat layout allows): a module may import
# its own layer and the layers below it, never one above.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("entry", ("__main__", "cli")),
    ("commands", ("commands",)),
    ("cli libraries", ("config", "cron", "batch", "farm")),
    ("tick and resident", ("tick", "supervisor", "cluster.watcher", "job.notify")),
    ("cluster", ("cluster",)),
    ("job, state, processes, lock", ("job", "state", "proc", "lock")),
    ("util", ("errors", "envvars", "timefmt", "paths", "files", "lightjson", "quoting")),
]
# Upward edges that another change removes; each one named, none added.
KNOWN_UPWARD: set[tuple[str, str]] = set()
TICK = ("tick",)
RESIDENT = ("supervisor", "cluster.watcher", "proc.spawn")
CLI_SIDE = ("cli", "commands", "config", "cron", "farm", "batch")


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST, name: str, is_package: bool, known: set[str]) -> set[str]:
    """Our modules that the module `name` imports when it runs (relative names resolved)."""
    found: set[str] = set()
    here = name.split(".") if is_package else name.split(".")[:-1]

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for branch in node.orelse:
                visit(branch)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = (here[:len(here) - node.level + 1] if node.level else [])
            module = ".".join(base + ([node.module] if node.module else []))
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                found.add(sub if sub in known else module)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return {m for m in found if m in known and m != name}


def import_graph(sources: dict[str, tuple[str, bool]]) -> dict[str, set[str]]:
    """module name -> the modules it imports, from {module name: (source text, is a package)}."""
    known = set(sources)
    return {name: _imports(ast.parse(text), name, is_package, known) for name, (text, is_package) in sources.items()}


def package_sources() -> dict[str, tuple[str, bool]]:
    import watchdog_singleton

    root = os.path.dirname(os.path.abspath(watchdog_singleton.__file__))
    sources: dict[str, tuple[str, bool]] = {}
    for folder, _dirs, names in os.walk(root):
        for file_name in names:
            if not file_name.endswith(".py"):
                continue
            rel = os.path.relpath(os.path.join(folder, file_name), os.path.dirname(root))[:-3].replace(os.sep, ".")
            is_package = file_name == "__init__.py"
            with open(os.path.join(folder, file_name), encoding="utf-8") as f:
                sources[rel[:-len(".__init__")] if is_package else rel] = (f.read(), is_package)
    return sources


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle as [a, b, ..., a], or [] if there is none (depth-first, iterative)."""
    done: set[str] = set()
    for start in sorted(graph):
        if start in done:
            continue
        path: list[str] = [start]
        on_path = {start}
        stack = [iter(sorted(graph[start]))]
        while stack:
            step = next(stack[-1], None)
            if step is None:
                stack.pop()
                done.add(path[-1])
                on_path.discard(path.pop())
            elif step in on_path:
                return path[path.index(step):] + [step]
            elif step not in done:
                path.append(step)
                on_path.add(step)
                stack.append(iter(sorted(graph.get(step, ()))))
    return []


def _short(module: str) -> str:
    return module[len(PACKAGE) + 1:] if module.startswith(PACKAGE + ".") else module


def _in(module: str, prefixes: tuple[str, ...]) -> bool:
    short = _short(module)
    return any(short == p or short.startswith(p + ".") for p in prefixes)


def _layer(module: str) -> int:
    for index, (_name, prefixes) in enumerate(LAYERS):
        if _in(module, prefixes):
            return index
    return -1


def _reachable(graph: dict[str, set[str]], start: str) -> dict[str, str]:
    """Every module `start` reaches -> the module that imports it on the way (for the message)."""
    seen: dict[str, str] = {}
    todo = [start]
    while todo:
        here = todo.pop()
        for there in graph.get(here, ()):
            if there not in seen and there != start:
                seen[there] = here
                todo.append(there)
    return seen


def test_the_graph_sees_lazy_imports_and_skips_type_only_ones() -> None:
    graph = import_graph({
        "p": ("", True),
        "p.a": ("from . import b\nTYPE_CHECKING = False\nif TYPE_CHECKING:\n    from .c import X\n", False),
        "p.b": ("def f():\n    from .c import Y\n    return Y\n", False),
        "p.c": ("import typing\nif typing.TYPE_CHECKING:\n    from p import a\nelse:\n    from p.sub import z\n",
                False),
        "p.sub": ("from .. import a\nfrom . import z\n", True),
        "p.sub.z": ("", False),
    })
    assert graph == {"p": set(), "p.a": {"p.b"}, "p.b": {"p.c"}, "p.c": {"p.sub.z"}, "p.sub": {"p.a", "p.sub.z"},
                     "p.sub.z": set()}


def test_find_cycle_finds_one_and_only_when_there_is_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set(), "d": {"a", "c"}}) == []
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    # Today's old shape: a package __init__ that is both the interface and the factory of its engines.
    old = import_graph({"p": ("", True),
                        "p.leases": ("def open_cluster():\n    from .postgres import Engine\n", True),
                        "p.leases.postgres": ("from . import Grant\n", False)})
    assert find_cycle(old) == ["p.leases", "p.leases.postgres", "p.leases"]


def test_no_import_cycle() -> None:
    cycle = find_cycle(import_graph(package_sources()))
    assert not cycle, "import cycle: " + " -> ".join(_short(m) for m in cycle)


def test_every_module_has_a_layer() -> None:
    assert [m for m in package_sources() if m != PACKAGE and _layer(m) < 0] == []


def test_no_module_imports_a_layer_above_its_own() -> None:
    graph = import_graph(package_sources())
    upward = sorted((_short(a), _short(b)) for a, targets in graph.items() for b in targets
                    if a != PACKAGE and b != PACKAGE and _layer(b) < _layer(a))
    assert [edge for edge in upward if edge not in KNOWN_UPWARD] == []


@pytest.mark.parametrize("what,modules", [("the tick", TICK), ("the resident supervisor", RESIDENT)])
def test_the_tick_and_the_resident_never_reach_the_cli_side(what: str, modules: tuple[str, ...]) -> None:
    graph = import_graph(package_sources())
    for module in modules:
        reached = _reachable(graph, f"{PACKAGE}.{module}")
        bad = sorted(f"{_short(m)} (from {_short(via)})" for m, via in reached.items() if _in(m, CLI_SIDE))
        assert bad == [], f"{what}: {module} reaches {bad}"


def test_the_farm_never_imports_the_tick_or_the_resident() -> None:
    """proc/ is shared (spawn and the child-process loop are the supervisor's and the farm's alike);
    the tick's and the resident's own folders are not."""
    graph = import_graph(package_sources())
    own = TICK + tuple(m for m in RESIDENT if not m.startswith("proc."))
    bad = sorted((_short(a), _short(b)) for a, targets in graph.items() for b in targets
                 if _in(a, ("farm",)) and _in(b, own))
    assert bad == []


def unresolved_relative_imports(sources: dict[str, tuple[str, bool]]) -> list[str]:
    """Every `from .x import y` (module level or lazy) whose `.x` is no module of ours: a file moved
    a folder deeper keeps its old dots, and a lazy one fails only on the path that runs it."""
    bad = []
    for name, (text, is_package) in sources.items():
        here = name.split(".") if is_package else name.split(".")[:-1]
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ImportFrom) and node.level:
                module = ".".join(here[:len(here) - node.level + 1] + ([node.module] if node.module else []))
                if module not in sources:
                    bad.append(f"{_short(name)}:{node.lineno}: {'.' * node.level}{node.module or ''}")
    return bad


def test_every_relative_import_names_a_module_of_ours() -> None:
    assert unresolved_relative_imports(package_sources()) == []
    moved = {"pkg": ("", True), "pkg.paths": ("", False), "pkg.farm": ("", True),
             "pkg.farm.store": ("", True), "pkg.farm.store.postgres": ("def f():\n    from ..paths import x\n", False)}
    assert unresolved_relative_imports(moved) == ["pkg.farm.store.postgres:2: ..paths"]  # it can fail
