"""The environment a job keeps is the shell's, not what Python added to its own: with no locale
set (cron's environment, a bare login), the interpreter coerces the C locale (PEP 538) and sets
LC_CTYPE=C.UTF-8 in os.environ. That is not the user's: a job installed or applied from such a
shell must not keep it, or the daemon runs under another locale than it did from the shell, and
an exported imported job (cron's environment, no LC_CTYPE) is restarted by apply of the export."""

from __future__ import annotations

import json
import os

from conftest import Sandbox


def no_locale_env(sandbox: Sandbox) -> dict[str, str]:
    env = sandbox.env()
    for key in ("LANG", "LC_ALL", "LC_CTYPE"):
        env.pop(key, None)
    return env


def test_install_from_a_shell_without_a_locale_keeps_no_coerced_lc_ctype(sandbox: Sandbox) -> None:
    name = sandbox.job("nolocale")
    sandbox.ok("install", name, "--no-start", "--", "sleep", "100", env=no_locale_env(sandbox))
    with open(os.path.join(sandbox.state_root, "jobs", f"{name}.json")) as f:
        env = json.load(f)["env"]
    assert "LC_CTYPE" not in env, env


def test_install_keeps_an_lc_ctype_the_shell_set(sandbox: Sandbox) -> None:
    name = sandbox.job("withlocale")
    sandbox.ok("install", name, "--no-start", "--", "sleep", "100",
               env=dict(no_locale_env(sandbox), LC_CTYPE="C.UTF-8"))
    with open(os.path.join(sandbox.state_root, "jobs", f"{name}.json")) as f:
        env = json.load(f)["env"]
    assert env.get("LC_CTYPE") == "C.UTF-8", env
