"""Registers every command group. One module per group; each exposes `register(cli)`."""

from __future__ import annotations

import importlib

import click

# Modules are listed here as they land; each owns its commands.
_MODULES = [
    "orchestrator.cli.cluster_cmd",
    "orchestrator.cli.db_cmd",
    "orchestrator.cli.runs_cmd",
    "orchestrator.cli.submit_cmd",
    "orchestrator.cli.image_cmd",
    "orchestrator.cli.campaign_cmd",
    "orchestrator.cli.attach_cmd",
    "orchestrator.cli.compare_cmd",
    "orchestrator.cli.history_cmd",
    "orchestrator.cli.web_cmd",
    "orchestrator.cli.export_cmd",
    "orchestrator.cli.import_cmd",
    "orchestrator.cli.health_cmd",
]


def register(cli: click.Group) -> None:
    for name in _MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # not written yet
                continue
            raise
        module.register(cli)
