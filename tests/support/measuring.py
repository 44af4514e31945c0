"""Checks shared by the providers' measuring tests: an outcome's type, a figure against truth."""

from __future__ import annotations

from runner.records import Failure, Result

# A measured time may come this much before the truth (clock granularity) or after it
# (the simulator's and the client's own work on a loaded machine).
EARLY = 0.005
LATE = 0.06


def result_of(outcome: Result | Failure) -> Result:
    """The outcome, which must be a Result."""
    assert isinstance(outcome, Result), outcome
    return outcome


def failure_of(outcome: Result | Failure) -> Failure:
    """The outcome, which must be a Failure."""
    assert isinstance(outcome, Failure), outcome
    return outcome


def assert_close(measured: float | None, truth: float | None) -> None:
    """A measured time is the truth, at most EARLY before it and LATE after it."""
    assert measured is not None and truth is not None
    assert truth - EARLY <= measured <= truth + LATE, (measured, truth)
