"""The crash campaign (issue 14): SIGKILL the main process of real CLI runs at seeded
random moments, many times, and hold flowdeco to its crash promises.

One campaign (``chaos.crashlib.suite_campaigns``: 2 kills with ``--executor
process``, then 20 with the thread executor, ``-w 4``) runs once per session
and every test here checks one promise over all its kills:

- no task whose ``task_succeeded`` event is in the audit trail at a kill runs again;
- at most ``workers + 1`` finished tasks run again per kill;
- the resume right after a kill is accepted, and no process of the killed run
  is alive 10 s after the kill;
- every run ends with the results of an uninterrupted run.

``python tests/chaos/campaign.py`` runs larger campaigns and prints the figures.
"""

from __future__ import annotations

import sys

import pytest

from chaos import crashlib

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="the campaign reads /proc to find a killed run's processes")

EXECUTORS = list(crashlib.SUITE_KILLS)


@pytest.fixture(scope="module")
def campaigns(tmp_path_factory):
    return crashlib.suite_campaigns(lambda: tmp_path_factory.mktemp("crash-campaign"))


def _show(items: list[str], limit: int = 10) -> str:
    more = f"\n... and {len(items) - limit} more" if len(items) > limit else ""
    return "\n".join(items[:limit]) + more


def test_the_kills_land_where_the_promises_are_tested(campaigns):
    """The campaign can fail: enough kills, most of them while task bodies run."""
    for executor, wanted in crashlib.SUITE_KILLS.items():
        assert len(campaigns[executor].kills) >= wanted, executor
    thread = campaigns["thread"]
    assert thread.mid_run_kills >= 8, crashlib.summary_table([thread])
    assert any(k.audited for k in thread.kills)   # kills after completions were audited


@pytest.mark.parametrize("executor", EXECUTORS)
def test_no_task_audited_as_succeeded_runs_again(campaigns, executor):
    camp = campaigns[executor]
    assert not camp.audit_violations(), (
        f"tasks whose task_succeeded event was in the audit trail at a kill ran again:\n"
        + _show(camp.audit_violations()))


@pytest.mark.parametrize("executor", EXECUTORS)
def test_reruns_per_kill_at_most_workers_plus_one(campaigns, executor):
    camp = campaigns[executor]
    over = [f"round {k.round} kill of session {k.session} at +{k.delay:.2f}s: "
            f"{len(k.reruns)} re-runs {sorted(k.reruns)}" for k in camp.over_bound()]
    assert not over, (f"more than workers + 1 = {camp.bound} finished tasks ran again after a "
                      f"kill (re-runs per kill: {camp.rerun_counts()}):\n" + _show(over))


@pytest.mark.parametrize("executor", EXECUTORS)
def test_resume_accepted_at_once_and_no_process_outlives_the_kill(campaigns, executor):
    camp = campaigns[executor]
    assert all(k.leftover_checked for k in camp.kills)
    problems = camp.refused() + [f"alive {crashlib.GRACE:.0f}s after the kill: {p}"
                                 for p in camp.leftovers()]
    assert not problems, (f"{len(camp.refused())} of {camp.resumes()} restarts refused, "
                          f"{len(camp.leftovers())} leftover processes:\n" + _show(problems))


@pytest.mark.parametrize("executor", EXECUTORS)
def test_final_results_equal_an_uninterrupted_runs(campaigns, executor):
    camp = campaigns[executor]
    assert camp.rounds
    assert not camp.unequal_rounds(), _show(camp.unequal_rounds())
    assert not camp.problems(), _show(camp.problems())
