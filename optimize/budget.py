"""`RunBudget`: the wall-clock budget of a whole search run (`search.py --timeout`).

The budget runs from the command's start to its last report written. What comes after the
trials is reserved from it: the presets still to score (none when their results are cached,
`optimize.cache`) and writing the run folder. A trial is started only when the trials
measured so far in this run say it ends before that reserve; the runner asks after every
finished trial and calls ``study.stop()`` when the answer is no (`optimize.runner`).

Optuna's own ``timeout`` stops starting trials at a fixed moment whatever they cost, so a run
overshoots it by up to one trial plus everything after the trials; this budget stops one
trial's cost earlier and so ends on time, at the price of the trials that no longer fit.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence

__all__ = ["RunBudget", "REPORT_S", "trial_estimate", "budget_name"]

#: Seconds kept for what the run cannot measure before it needs them: writing the run folder
#: (0.6 s on a 2-core Intel Xeon VM), the interpreter's start and imports before the command
#: began (5 s there, busy), and a margin for a last trial that costs more than its estimate.
REPORT_S = 20.0
# The sampler moves through the space, and what a candidate costs moves with it: the last
# ten trials say what its current region costs.
_RECENT = 10
# A high quantile rather than the mean: a trial that overruns costs the whole run's deadline,
# one not started costs one architecture.
_QUANTILE = 0.9


def trial_estimate(costs: Sequence[float]) -> float | None:
    """What the next trial will cost, seconds: the 90th percentile (nearest rank) of the last
    ten measured `costs` (seconds each, in the order measured); None before any."""
    recent = sorted(costs[-_RECENT:])
    if not recent:
        return None
    return recent[max(math.ceil(_QUANTILE * len(recent)) - 1, 0)]


def budget_name(seconds: float) -> str:
    """``10-minute`` for 600, ``90-second`` for 90: the budget as the notes name it."""
    return f"{seconds / 60:g}-minute" if seconds % 60 == 0 else f"{seconds:g}-second"


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunBudget:
    """A whole run's wall-clock budget, `seconds` from `start`, both on `clock` (seconds
    since the epoch by default, so that worker processes share it; a test passes a fake).

    `presets` is how many proxy evaluations come after the trials (each reserved at the cost
    of a trial), `after_s` the seconds reserved for the rest (`REPORT_S`). Picklable with
    the default clock (worker processes receive it, `optimize.processes`).
    """

    seconds: float | None
    start: float
    presets: int = 0
    after_s: float = REPORT_S
    clock: Callable[[], float] = time.time

    def __post_init__(self) -> None:
        if self.seconds is not None and not self.seconds > 0:
            raise ValueError(f"RunBudget: seconds {self.seconds} must be > 0 (None: no budget)")
        if self.presets < 0 or not self.after_s >= 0:
            raise ValueError("RunBudget: presets and after_s must be >= 0")

    @property
    def limited(self) -> bool:
        return self.seconds is not None

    def left(self) -> float:
        """Seconds left of the whole run (inf without a budget)."""
        if self.seconds is None:
            return math.inf
        return self.start + self.seconds - self.clock()

    def reserve(self, trial_s: float | None) -> float:
        """Seconds kept for the work after the trials, when a trial costs `trial_s`."""
        return self.presets * (trial_s or 0.0) + self.after_s

    def for_trials(self, costs: Sequence[float] = ()) -> float:
        """Seconds left for trials to run in, the reserve taken off (inf without a budget)."""
        return self.left() - self.reserve(trial_estimate(costs))

    def fits(self, costs: Sequence[float]) -> bool:
        """Whether a trial started now ends in time, judged by the trials measured so far
        (`costs`, seconds each; before any, whether time is left at all)."""
        if self.seconds is None:
            return True
        left = self.for_trials(costs)
        return left > 0 and left >= (trial_estimate(costs) or 0.0)

    def shortfall(self, evaluated: int, wanted: int) -> str:
        """The line that says the budget ended the trials before `wanted` were evaluated."""
        name = budget_name(self.seconds) if self.seconds is not None else "unlimited"
        return (f"{evaluated} of {wanted} trials in the {name} budget; `--trials`/`--timeout` "
                "to change it")
