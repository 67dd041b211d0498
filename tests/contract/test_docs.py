"""The README is the front door and the reference lives in docs/: every relative link between
them, and every #anchor, must lead somewhere (GitHub's anchor rules)."""

from __future__ import annotations

import glob
import os
import re
from urllib.parse import unquote

import pytest
from docskit import ROOT, anchors, doc_paths, docs_text, links, slug


def test_anchors_follow_githubs_rules() -> None:
    assert slug("Across hosts: one copy on a cluster lease") == "across-hosts-one-copy-on-a-cluster-lease"
    assert slug("`install NAME [OPTIONS] -- COMMAND [ARG...]`") == "install-name-options----command-arg"
    assert slug("snake_case and dash-case!") == "snake_case-and-dash-case"
    assert anchors("# A\n```\n# not a heading\n```\n## A\n") == {"a", "a-1"}


def test_the_reference_moved_to_docs_and_the_readme_points_there() -> None:
    assert len(doc_paths()) > 2
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    assert "bash contrib/demo.sh" in readme and "bash tests/run.sh" in readme
    assert any(link.startswith("docs/") for link in links(readme))
    assert "## Guarantees, and what each fault does" in docs_text()


@pytest.mark.parametrize("path", doc_paths(), ids=lambda p: os.path.relpath(p, ROOT))
def test_every_relative_link_and_anchor_resolves(path: str) -> None:
    with open(path, encoding="utf-8") as f:
        text = f.read()
    broken = []
    for link in links(text):
        if "://" in link or link.startswith("mailto:"):
            continue
        target, _, anchor = link.partition("#")
        target_path = os.path.normpath(os.path.join(os.path.dirname(path), unquote(target))) if target else path
        if not os.path.exists(target_path):
            broken.append(f"{link}: no file {os.path.relpath(target_path, ROOT)}")
            continue
        if anchor and target_path.endswith(".md"):
            with open(target_path, encoding="utf-8") as f:
                if unquote(anchor) not in anchors(f.read()):
                    broken.append(f"{link}: no heading #{anchor} in {os.path.relpath(target_path, ROOT)}")
    assert not broken, broken


def test_every_path_under_tests_that_the_docs_or_the_code_name_exists() -> None:
    # The tests live in folders by kind (tests/unit, world, e2e, contract, soak) beside their kits
    # (tests/kits): a sentence that names one must name where it is.
    named: dict[str, set[str]] = {}
    sources = doc_paths() + sorted(glob.glob(os.path.join(ROOT, "watchdog_singleton", "**", "*.py"), recursive=True))
    sources += sorted(glob.glob(os.path.join(ROOT, "tests", "**", "*.*"), recursive=True))
    sources += sorted(glob.glob(os.path.join(ROOT, "bench", "*.py"))) + [os.path.join(ROOT, ".ci", "run")]
    for path in sources:
        if os.path.isfile(path) and not path.endswith((".pyc", ".db")):
            with open(path, encoding="utf-8", errors="replace") as f:
                for found in re.findall(r"(?<![\w./-])tests/[\w./-]*\w", f.read()):
                    named.setdefault(found, set()).add(os.path.relpath(path, ROOT))
    old_start = os.path.join("tests", "slurm", "start.sh")  # the slurm.conf marker of start.sh keeps its old path
    named.get(old_start, set()).discard(os.path.join("tests", "kits", "slurm", "start.sh"))
    missing = {p: sorted(where) for p, where in named.items()
               if where and not os.path.exists(os.path.join(ROOT, p)) and not re.search(r"/[A-Z]+$", p)}  # not x/NAME
    assert not missing, missing
