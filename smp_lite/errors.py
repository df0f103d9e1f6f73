"""Errors a user can act on. The CLI prints their message as one line: exit code 1, or 2 for a
ConfigError (a bad option value), 130 for an interrupted run."""

from __future__ import annotations

from pathlib import Path


class DataError(Exception):
    """A dataset that cannot be read as given: the message names the path and the problem."""


class TrainError(Exception):
    """A run that cannot start or go on: the message says why and what to do."""


class ConfigError(TrainError, ValueError):
    """A setting with a value no run can use (unknown architecture, zero epochs, ...)."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped a run after it saved `checkpoint`, from which it can resume."""

    def __init__(self, checkpoint: Path):
        super().__init__(f"interrupted: saved {checkpoint}")
        self.checkpoint = checkpoint
