"""Constants once: every environment variable name in envvars.py, every exit code in errors.py, the
time format in timefmt.py. Read statically from the package's source, so a copy made anywhere else
(a second `JOB_ENV = "WATCHDOG_SINGLETON_JOB"`, a bare `sys.exit(75)`) fails here."""

from __future__ import annotations

import ast
import os
import re

import watchdog_singleton

ROOT = os.path.dirname(os.path.abspath(watchdog_singleton.__file__))
ENV_NAME = re.compile(r"WATCHDOG_SINGLETON_[A-Z_]+|PROC_NUMBER")
TIME_FORMAT = "%Y-%m-%dT%H:%M:%S%z"


def modules() -> dict[str, ast.Module]:
    found: dict[str, ast.Module] = {}
    for folder, _dirs, names in os.walk(ROOT):
        for name in names:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                with open(path, encoding="utf-8") as f:
                    found[os.path.relpath(path, ROOT)] = ast.parse(f.read())
    return found


def _strings(tree: ast.Module) -> list[str]:
    return [node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)]


def test_every_environment_variable_name_is_spelled_in_envvars_only() -> None:
    stray = sorted((path, text) for path, tree in modules().items() if path != "envvars.py"
                   for text in _strings(tree) if ENV_NAME.fullmatch(text))
    assert stray == []


def test_the_time_format_is_spelled_in_timefmt_only() -> None:
    stray = sorted(path for path, tree in modules().items() if path != "timefmt.py"
                   for text in _strings(tree) if TIME_FORMAT in text)
    assert stray == []


def test_no_process_exits_with_a_bare_number() -> None:
    """sys.exit(N), os._exit(N) and UserError(..., N) name their code (errors.py) instead."""
    bare = []
    for path, tree in modules().items():
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = ast.unparse(node.func)
            args = node.args[1:] if func.endswith("Error") else node.args if func in ("sys.exit", "os._exit") else []
            bare += [f"{path}:{node.lineno} {func}" for arg in args
                     if isinstance(arg, ast.Constant) and isinstance(arg.value, int) and arg.value != 0]
    assert bare == []


def test_only_errors_py_defines_an_exit_code() -> None:
    """No module-level NAME = <code> for the codes that mean something (EX_IOERR, EX_TEMPFAIL, the
    shell's 124/126/127, 128+N) outside errors.py."""
    codes = {74, 75, 124, 126, 127, 130, 137}
    stray = sorted(f"{path}:{node.lineno}" for path, tree in modules().items() if path != "errors.py"
                   for node in tree.body if isinstance(node, ast.Assign)
                   and isinstance(node.value, ast.Constant) and node.value.value in codes)
    assert stray == []
