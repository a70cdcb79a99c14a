"""Hypothesis profiles for the whole suite.

    ci    (the default) derandomized, so every run tries the same examples; a modest number
          of examples per test; no example database written into the repository
    deep  many more examples, random each run: HYPOTHESIS_PROFILE=deep pytest tests/fuzz
"""

import os

from hypothesis import HealthCheck, settings

_SHARED = dict(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("ci", derandomize=True, max_examples=25, **_SHARED)
settings.register_profile("deep", derandomize=False, max_examples=2000, **_SHARED)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
