"""The README's links into itself lead somewhere: each `](#anchor)` names a heading, as GitHub
makes anchors of headings."""

from __future__ import annotations

import os
import re

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def github_anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def test_every_readme_anchor_names_a_heading() -> None:
    with open(README, encoding="utf-8") as f:
        text = f.read()
    in_code = False
    anchors = set()
    for line in text.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and line.startswith("#"):
            anchors.add(github_anchor(line.lstrip("#")))
    links = set(re.findall(r"\]\(#([^)]+)\)", text))
    assert links, "the README links into itself"
    assert sorted(links - anchors) == []
