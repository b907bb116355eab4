"""How the suite spreads over pytest-xdist workers (`make test`, `make test-scaled`).

With ``--dist loadscope`` the work units are:

* an integration module, whole: its module-scoped set-ups (an ingested cluster, a trained
  model) run once, and its tests, which build on each other's state, stay in file order;
* the integration modules that read the session's shared pipeline state
  (``tests/integration/pipeline_state.py``), together, so that state is ingested once;
* every other test on its own, so the unit tests fill whichever worker is free.

Integration modules come first (collection order, no reordering by size): they are the
long work units, and the short ones then even out the end of the run.

pytest-xdist's own ``loadgroup`` would express this with markers, but with pytest 9 it no
longer sees them (it renames ``item._nodeid``, which pytest 9 no longer reads).
`make check` runs unit tests only and uses xdist's own ``--dist load``.
"""

from __future__ import annotations

from typing import Any

import pytest

INTEGRATION = "tests/integration/"


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    if config.getvalue("dist") != "loadscope":
        return None
    from pipeline_state import PIPELINE_MODULES
    from xdist.scheduler import LoadScopeScheduling

    class ModulesAndTests(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            if not path.startswith(INTEGRATION):
                return nodeid
            module = path.removeprefix(INTEGRATION).removesuffix(".py")
            return f"{INTEGRATION}pipeline-state" if module in PIPELINE_MODULES else path

    config.option.loadscopereorder = False
    return ModulesAndTests(config, log)
