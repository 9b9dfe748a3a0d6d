"""Drift calibration with the real embedding model: in-distribution windows stay ok, shifted traffic alerts soon.

The numbers are printed (run with -s) and written by `python -m loadtests.drift_calibration` with a chart.
"""

from __future__ import annotations

import pytest

from loadtests.drift_calibration import SHIFTS, calibrate

pytestmark = pytest.mark.slow

WINDOW = 200
MAX_DELAY = 60
"""Shifted requests in a window of 200 by which every shift must have alerted (measured: 5 to 40)."""


def test_in_distribution_stays_ok_and_every_shift_alerts_within_a_bound() -> None:
    result = calibrate(windows=100, window=WINDOW, step=5)
    print(f"false alarms {result.false_alarm_rate:.1%} {result.statuses}, delays {result.detection_delay}")
    assert result.statuses.get("ok", 0) >= 95, result
    assert result.statuses.get("alert", 0) <= 1, result
    for kind in SHIFTS:
        delay = result.detection_delay[kind]
        assert delay is not None and delay <= MAX_DELAY, (kind, result.detection_delay)
