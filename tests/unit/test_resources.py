"""images/ and migrations/: at the checkout's root when running from source, orchestrator/_data/
when installed from the wheel (tests/integration/test_wheel_install.py installs one)."""

from pathlib import Path

import pytest

from orchestrator import resources
from orchestrator.store import migrate

REPO = Path(__file__).resolve().parents[2]


def test_a_checkout_uses_the_folders_at_its_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(resources.IMAGES_DIR_ENV, raising=False)

    assert not resources.PACKAGED_DATA.exists()
    assert resources.migrations_dir() == REPO / "migrations"
    assert resources.images_dir() == REPO / "images"
    assert migrate.MIGRATIONS_DIR == REPO / "migrations"


def test_the_packaged_copy_wins_folder_by_folder(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv(resources.IMAGES_DIR_ENV, raising=False)
    (tmp_path / "images" / "cpu").mkdir(parents=True)
    monkeypatch.setattr(resources, "PACKAGED_DATA", tmp_path)

    assert resources.images_dir() == tmp_path / "images"
    # No packaged migrations/ here: the checkout's.
    assert resources.migrations_dir() == REPO / "migrations"


def test_the_environment_names_another_images_folder(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(resources, "PACKAGED_DATA", tmp_path)
    (tmp_path / "images").mkdir()
    monkeypatch.setenv(resources.IMAGES_DIR_ENV, str(tmp_path / "mine"))

    assert resources.images_dir() == tmp_path / "mine"
    assert resources.migrations_dir() == REPO / "migrations"
