"""The train-controller flow's split of each scenario into training and validation ranges."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from control_sources import daily_source

from flows.train_controller import split_sources


def test_split_keeps_the_last_steps_for_validation_and_their_times() -> None:
    src = daily_source("a", days=2)
    train, validate = split_sources([src], validation_steps=600, min_train_steps=100)
    (head,), (tail,) = train, validate
    n = len(src.arrivals)
    assert len(head.arrivals) == n - 600 and len(tail.arrivals) == 600
    np.testing.assert_array_equal(np.concatenate([head.arrivals, tail.arrivals]), src.arrivals)
    np.testing.assert_array_equal(tail.forecast, src.forecast[n - 600 :])
    assert tail.start == src.start + pd.Timedelta(minutes=n - 600)
    assert head.rule == tail.rule == src.rule


def test_split_skips_short_sources_and_refuses_when_none_is_left() -> None:
    long, short = daily_source("long", days=2), daily_source("short", days=1)
    train, validate = split_sources([long, short], validation_steps=1000, min_train_steps=1000)
    assert [s.name for s in train] == [s.name for s in validate] == ["long"]
    with pytest.raises(ValueError, match="lower validation_days"):
        split_sources([short], validation_steps=1000, min_train_steps=1000)
