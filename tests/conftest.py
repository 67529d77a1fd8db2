"""Shared pytest fixtures."""

from pathlib import Path

import pytest

#: ``../shared/data`` relative to the repository root (real observations; absent in a fresh clone).
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path of the real-data folder ``../shared/data``; skips the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} not found")
    return SHARED_DATA


@pytest.fixture(scope="session")
def emulator():
    """The bundled default SED emulator."""
    from pegleg.sed import load_emulator

    return load_emulator("default")
