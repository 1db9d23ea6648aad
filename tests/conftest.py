"""Shared test fixtures.

Real herbarium data lives beside the checkout in ``../shared/data`` on the developers'
machines and in CI; a user's clone has none, so every test that reads it takes the
``shared_data`` fixture (or the ``needs_shared_data`` mark) and skips cleanly.
"""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_shared_data = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data is absent (real data not on this machine)")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is absent (real data not on this machine)")
    return SHARED_DATA

# the fake iDigBio/GBIF server and the no-network guard, for every test module
from fake_portal import fake_portal_fixture, loopback_only_fixture  # noqa: E402,F401
