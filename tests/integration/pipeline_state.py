"""What the session's shared pipeline run ingests (the ``pipeline_run`` fixture)."""

from __future__ import annotations

import pandas as pd

PIPELINE_DAYS = 9
PIPELINE_SERVICES = ["analytics", "checkout", "notifications"]
# History up to the current minute: `feast materialize-incremental` starts its first run one
# TTL (1 h) before the wall clock, so older data would never reach the online store.
PIPELINE_END = pd.Timestamp.now(tz="UTC").tz_localize(None).floor("min")
