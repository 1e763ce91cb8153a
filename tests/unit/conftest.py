"""Fast, pure unit tests (no Ray, no server, no app lifespan): property tests with hypothesis and
the tests that kill mutants (scripts/mutation.sh runs them).

Hypothesis profiles: `default` for everyday runs; `mutation` (set HYPOTHESIS_PROFILE=mutation, as
scripts/mutation.sh does) runs fewer, derandomized examples without the example database, so a
mutation run is reproducible and quick.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile("default", max_examples=100, deadline=None)
settings.register_profile(
    "mutation", max_examples=20, deadline=None, derandomize=True, database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
