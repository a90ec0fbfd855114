"""Errors the workload reports without a traceback: a message that names what was wrong and a
remedy that says how to fix it. They end up in the rank file's `error` and on stderr."""

from __future__ import annotations

from typing import Optional


class WorkloadError(Exception):
    """Base of user-facing workload errors.

    The constructor also accepts a single message argument, because the DataLoader re-raises a
    worker's exception as `type(exc)(text)`.
    """

    exit_code = 2

    def __init__(self, message: str, remedy: Optional[str] = None) -> None:
        super().__init__(message)
        self.message = message
        self.remedy = remedy

    def one_line(self) -> str:
        text = self.message if not self.remedy else f"{self.message} ({self.remedy})"
        return " ".join(text.split())


class ConfigError(WorkloadError):
    """A command-line option, --config name or --set key is invalid."""


class DatasetError(WorkloadError):
    """The dataset directory, an annotation file or an image is missing or malformed."""


class WeightsError(WorkloadError):
    """The backbone weights file is missing or is not a ResNet-50 checkpoint."""


class DeviceError(WorkloadError):
    """The requested device, backend or precision is not available here."""


class TrainingDiverged(WorkloadError):
    """The loss became NaN or infinite."""

    exit_code = 3


class Terminated(WorkloadError):
    """The process received SIGTERM/SIGINT (e.g. torchrun stopping the group after a peer failed)."""

    exit_code = 143
