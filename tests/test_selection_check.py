"""The pure parts of scripts/selection_check.py, with hand-computed numbers."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from selection_check import discordance, rule_rows, window_choice  # noqa: E402


def test_window_choice_is_the_first_best_trailing_mean():
    values = [10.0, 30.0, 12.0, 20.0, 21.0, 22.0]
    assert window_choice(values, 1) == 1
    assert window_choice(values, 3) == 5  # means 10, 20, 17.3, 20.7, 17.7, 21
    assert window_choice([5.0, 5.0, 5.0], 2) == 0  # ties: the first


def test_discordance_counts_pairs_ordered_differently():
    assert discordance([1, 2, 3], [10, 20, 30]) == 0.0
    assert discordance([1, 2, 3], [30, 20, 10]) == 1.0
    # pairs (0,1) agree, (0,2) disagree, (1,2) tie in validation: (0 + 1 + 0.5) / 3
    assert discordance([1, 2, 2], [10, 20, 5]) == pytest.approx(0.5)


def test_rule_rows_pick_by_validation_and_measure_regret_on_test():
    scores = [{"name": "start", "validation": 10, "validation_family": 12, "test": 11},
              {"name": "step 250", "validation": 14, "validation_family": 11, "test": 12},
              {"name": "step 500", "validation": 13, "validation_family": 13, "test": 15},
              {"name": "step 750", "validation": 13.5, "validation_family": 10, "test": 14}]
    rows = rule_rows(scores)
    assert rows["best"] == {"chosen": "step 250", "test": 12, "regret": 3}
    # means of the last 3: 10, 12, 12.33, 13.5
    assert rows["mean-of-3"] == {"chosen": "step 750", "test": 14, "regret": 1}
    assert rows["family"] == {"chosen": "step 500", "test": 15, "regret": 0}
