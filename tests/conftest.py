"""Shared pytest setup. Fixture modules live in tests/support/*_fixtures.py and load automatically."""

from pathlib import Path

pytest_plugins = sorted(
    f"tests.support.{p.stem}" for p in (Path(__file__).parent / "support").glob("*_fixtures.py")
)
