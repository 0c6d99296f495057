"""The real data in ../shared/data, for the tests that need it; they skip with the reason when it is absent."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


def shared_path(*parts: str) -> Path:
    """A path under ../shared/data, or a skip naming the missing path."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"needs the shared data at {path} (absent on this machine)")
    return path
