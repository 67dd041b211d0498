"""`status NAME --history` lists a periodic job's runs; of a job kept alive it says what it is,
rather than "no runs recorded", which read as if the daemon had never run."""

from __future__ import annotations

from watchdog_singleton.commands.status import history_table


def test_history_of_a_kept_alive_job_says_it_lists_periodic_runs_only() -> None:
    text = history_table({"name": "web", "periodic": False, "history": [], "restarts": 3})
    assert "no runs recorded" not in text and "periodic" in text and "restarted 3 time(s)" in text
    assert "\n" not in text


def test_history_of_a_periodic_job_that_never_ran_says_so() -> None:
    assert history_table({"name": "sync", "periodic": True, "history": []}) == "sync: no runs recorded"
