"""What each process may load: the cron tick and the resident supervisor of a plain job import the
standard library and our own code only. Cron may start the tick every minute and the resident stays
beside the daemon for its whole life, so a third-party import there costs every user, every minute.
The farm's run path too: the CLI stack alone would cost more than GNU parallel's whole start.

Checked at run time, in a fresh isolated interpreter (`-I -S`, as cron's line and the launcher's exec
start them), so a lazy import reached on the way is caught too.
"""

from __future__ import annotations

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
    ("the tick", "from watchdog_singleton import launch, runargs; runargs.parse(['web', '--detach', '--', 'x'])"),
    ("the resident supervisor", "from watchdog_singleton import resident, supervisor, logsink, pump, spawn"),
    ("the entry point before dispatch", "from watchdog_singleton import __main__"),
    ("the farm's run path", "from watchdog_singleton import farmargs; from watchdog_singleton.farm import workers; "
                            "farmargs.parse(['tasks.txt', '-n', '8'])"),
])
def test_the_tick_and_the_resident_load_no_third_party_module(what: str, code: str) -> None:
    loaded = _loaded_after(code)
    assert not [m for m in FORBIDDEN if m in loaded], f"{what} loads {[m for m in FORBIDDEN if m in loaded]}"


def test_the_contract_can_fail() -> None:
    """The probe sees a forbidden import when there is one (so the test above is not vacuous)."""
    assert "argparse" in _loaded_after("import argparse")
