"""The documentation as tests read it: README.md plus docs/*.md, and GitHub's anchor for a heading."""

from __future__ import annotations

import glob
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/kits/..


def doc_paths() -> list[str]:
    """README.md first, then docs/*.md in name order."""
    return [os.path.join(ROOT, "README.md")] + sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))


def docs_text() -> str:
    """Every documentation file's text, one after another: the README is the front door, the facts
    it used to hold now live in docs/, and a test that checks a fact is stated looks in all of them."""
    texts = []
    for path in doc_paths():
        with open(path, encoding="utf-8") as f:
            texts.append(f.read())
    return "\n".join(texts)


def slug(heading: str) -> str:
    """GitHub's anchor: the heading's text without its markup, lowercased, punctuation dropped
    except '-' and '_', each space a '-' (so `a -- b` gives `a----b`)."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link counts by its text
    text = text.replace("`", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """The anchors of a markdown file's headings (outside fenced code); a repeated one gets -1, -2, ..."""
    seen: dict[str, int] = {}
    out: set[str] = set()
    fenced = False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
            continue
        m = None if fenced else re.match(r"#{1,6} +(.*?) *#* *$", line)
        if m:
            base = slug(m.group(1))
            count = seen.get(base, 0)
            seen[base] = count + 1
            out.add(base if count == 0 else f"{base}-{count}")
    return out


def links(text: str) -> list[str]:
    """The targets of inline markdown links `[text](target)` outside fenced code and code spans."""
    found: list[str] = []
    fenced = False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            found += re.findall(r"\]\(([^)\s]+)\)", re.sub(r"`[^`]*`", "", line))
    return found
