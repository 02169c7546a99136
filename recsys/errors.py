"""Errors that a user can act on, raised by training and publishing and reported by the command
line as one message (exit 1) instead of a traceback. They live in the core so that the command
line knows them without importing the training stack (a serve-only environment has none of it).
"""

from __future__ import annotations


class NotReady(RuntimeError):
    """A step needs what an earlier step writes (a trained model, metrics), and it is missing."""


class NotEnoughData(RuntimeError):
    """The data cannot support a step (e.g. too few labelled visitors to train the ranker)."""


class GateRefused(RuntimeError):
    """The new model is worse than the baseline or than the published one."""
