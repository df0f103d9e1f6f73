"""Errors a user can act on. The CLI prints their message as one line and exits 2 for a usage
mistake (a ValueError: a bad option value, ConfigError; a path given that does not exist,
MissingPath), 1 for a failure at run time (DataError, TrainError), 130 for an interrupted run."""

from __future__ import annotations

from pathlib import Path


class DataError(Exception):
    """A dataset that cannot be read as given: the message names the path and the problem."""


class MissingPath(DataError, ValueError):
    """A path given on the command line (a dataset, a list, a checkpoint) that does not exist."""

    def __init__(self, message: str, path: Path) -> None:
        super().__init__(message)
        self.path = path


class TrainError(Exception):
    """A run that cannot start or go on: the message says why and what to do."""


class ConfigError(TrainError, ValueError):
    """A setting with a value no run can use (unknown architecture, zero epochs, ...)."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped a run after it saved `checkpoint`, from which it can resume."""

    def __init__(self, checkpoint: Path):
        super().__init__(f"interrupted: saved {checkpoint}")
        self.checkpoint = checkpoint
