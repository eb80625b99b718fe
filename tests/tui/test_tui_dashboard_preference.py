"""A preference-tuning run on the dashboard: the reward margin and the share of pairs ranked right, from the
metrics events' pref/ keys (engine/techniques/pairs.py), and nothing of the kind for other runs."""

from __future__ import annotations

from rich.console import Console

from event_helpers import metrics
from tui.screens.dashboard_view import stats_table
from tui.screens.run_history import RunHistory


def plain(table) -> str:  # noqa: ANN001 - a rich renderable
    console = Console(width=60, record=True, color_system=None)
    console.print(table)
    return console.export_text()


def test_reward_margin_and_accuracy_are_shown_for_preference_runs() -> None:
    h = RunHistory()
    h.apply(metrics(1, loss=0.69))
    assert "reward margin" not in plain(stats_table(h))  # a supervised run shows none
    h.apply(metrics(2, loss=0.61, pref_reward_chosen=0.2, pref_reward_rejected=-0.25, pref_margin=0.45,
                    pref_accuracy=0.875))
    table = plain(stats_table(h))
    assert "reward margin +0.450" in table and "pairs right   88%" in table
    h.apply(metrics(3, loss=0.75, pref_margin=-0.1, pref_accuracy=0.25))
    assert "reward margin -0.100" in plain(stats_table(h))
