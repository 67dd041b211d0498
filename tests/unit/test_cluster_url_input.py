"""A PostgreSQL URL libpq cannot parse is bad input (exit 2, one line, nothing written), not a
database that cannot be reached (exit 3 for `lease check`, 74 for a farm): asking again, or
another tick, cannot mend it. Checked without connecting."""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest

from watchdog_singleton.commands import lease as lease_cmd
from watchdog_singleton.commands.cluster import check_options
from watchdog_singleton.errors import USAGE, UserError
from watchdog_singleton.farm.store.factory import check_place

if importlib.util.find_spec("psycopg") is None:
    pytest.skip("needs psycopg (libpq parses the URL)", allow_module_level=True)

BAD = ["postgresql://me@[db.example.org/ws", "postgresql://me@db.example.org/ws?bogus=1"]


@pytest.mark.parametrize("url", BAD)
def test_install_refuses_a_cluster_url_libpq_cannot_parse(url: str) -> None:
    with pytest.raises(UserError) as caught:
        check_options(url, None, False, False, False, {})
    assert caught.value.exit_code == USAGE
    assert str(caught.value).startswith(f"cluster {url!r}: ")
    assert "\n" not in str(caught.value)


def test_a_good_url_passes() -> None:
    assert check_options("postgresql://me@db.example.org:5433/ws?sslmode=require", None, False, False, False, {}) \
        == ("postgresql://me@db.example.org:5433/ws?sslmode=require", 60.0)


@pytest.mark.parametrize("url", BAD)
def test_lease_check_of_a_url_libpq_cannot_parse_is_bad_input_not_unreachable(url: str) -> None:
    said: list[str] = []
    with pytest.raises(UserError) as caught:
        lease_cmd.check("web", 3, url, said.append)
    assert caught.value.exit_code == USAGE and said == []
    with pytest.raises(UserError) as caught:
        lease_cmd.status("web", url, said.append, said.append, as_json=False)
    assert caught.value.exit_code == USAGE


@pytest.mark.parametrize("url", BAD)
def test_a_farm_on_a_url_libpq_cannot_parse_is_refused_before_anything_is_made(url: str, tmp_path: Any) -> None:
    with pytest.raises(UserError) as caught:
        check_place(url, str(tmp_path / "w"))
    assert caught.value.exit_code == USAGE
