"""Hypothesis profiles for the whole suite, and the default image-pixel limit every test reads.

    ci    (the default) derandomized, so every run tries the same examples; a modest number
          of examples per test; no example database written into the repository
    deep  many more examples, random each run: HYPOTHESIS_PROFILE=deep pytest tests/fuzz
"""

import os

import pytest
from hypothesis import HealthCheck, settings

_SHARED = dict(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("ci", derandomize=True, max_examples=25, **_SHARED)
settings.register_profile("deep", derandomize=False, max_examples=2000, **_SHARED)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="session", autouse=True)
def _default_pixel_limit():
    # The tests name the default limit (89,478,485 pixels); a $VITKIT_MAX_IMAGE_PIXELS of the
    # shell that runs them would change what they read. (Session-wide: hypothesis refuses
    # function-scoped fixtures.)
    saved = os.environ.pop("VITKIT_MAX_IMAGE_PIXELS", None)
    yield
    if saved is not None:
        os.environ["VITKIT_MAX_IMAGE_PIXELS"] = saved
