"""What the session's shared pipeline run ingests (the ``pipeline_run`` fixture)."""

from __future__ import annotations

import pandas as pd

PIPELINE_DAYS = 9
PIPELINE_SERVICES = ["analytics", "checkout", "notifications"]
# History up to the current minute: `feast materialize-incremental` starts its first run one
# TTL (1 h) before the wall clock, so older data would never reach the online store.
PIPELINE_END = pd.Timestamp.now(tz="UTC").tz_localize(None).floor("min")
# The modules whose tests use that state (``pipeline_settings`` or ``pipeline_run``): under
# pytest-xdist they run in one worker, which ingests it once (tests/conftest.py). Collection
# fails if a module outside this list asks for the state (conftest.py here).
PIPELINE_MODULES = frozenset(
    {"test_feature_pipeline", "test_forecaster_flow", "test_controller_flow"}
)
