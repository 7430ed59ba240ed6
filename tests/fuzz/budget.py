"""How long the fuzzers run: a small fixed budget in the normal suite, longer on request.

    TOKIOS_FUZZ_EXAMPLES=N   examples per property (default 25, the CI budget; from 100 on, a long run
                             also runs schemathesis' coverage phase: every schema boundary of the API)
    TOKIOS_FUZZ_RANDOM=1     new random inputs on every run, remembered in .hypothesis/ (default: the
                             same derandomized inputs on every run, so that CI is reproducible)

A property may weigh more than one unit (`fuzz(weight=4)`) when it covers several surfaces at once.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

from lib.env import env_int

EXAMPLES = max(1, env_int("TOKIOS_FUZZ_EXAMPLES", 25))
RANDOM = os.environ.get("TOKIOS_FUZZ_RANDOM", "") == "1"
LONG = EXAMPLES >= 100


def fuzz(weight: float = 1) -> settings:
    return settings(
        max_examples=max(1, round(EXAMPLES * weight)),
        derandomize=not RANDOM,
        database=settings.default.database if RANDOM else None,
        deadline=None,  # a shared two-core machine: timing is not the property
        print_blob=True,
        # Fixtures (the org, its keys and models) are made once per test and serve every example.
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
    )
