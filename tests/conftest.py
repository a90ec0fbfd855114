"""Shared pytest setup. Fixture modules live in tests/support/*_fixtures.py and load automatically."""

from pathlib import Path

import pytest

# Fixture modules import each other; let pytest rewrite their asserts all the same.
pytest.register_assert_rewrite("tests.support")

pytest_plugins = sorted(
    f"tests.support.{p.stem}" for p in (Path(__file__).parent / "support").glob("*_fixtures.py")
)
