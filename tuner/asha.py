"""ASHA that promotes a trial past a rung only once the rung has seen enough trials to rank it.

Ray Tune's ``ASHAScheduler`` lets a trial go on past a rung (an epoch milestone) if its score is at least
the rung's ``1 - 1/reduction_factor`` percentile of the trials recorded there before it. The first trial to
reach a rung has nothing to be compared with and always goes on, and the second goes on if it beats the
first: early in a search, networks still at chance level are trained to the last epoch, each costing a
full training. On the space where most settings are bad (BENCHMARKS.md, section 2), three networks at
chance level took 27 of a search's first 46 trial-epochs. ASHA as published (Li et al., "A System for
Massively Parallel Hyperparameter Tuning", 2020) promotes the top ``floor(n / reduction_factor)`` of the
``n`` trials a rung has seen, so none until it has seen ``reduction_factor`` of them. Here a trial goes on
only if at least ``reduction_factor - 1`` others were recorded at the rung before it, and it is in their
top ``1/reduction_factor`` as Ray's rule has it. Ray's scheduler stops rather than pauses, so a trial
stopped by the quorum is not promoted later; the searcher still hears its score.

A small search cannot fill its upper rungs: 24 trials bring about 24, 8 and 3 to rungs 2, 6 and 18 with a
factor of 3, and a quorum at the last would stop nearly all of those 3, leaving no network trained to the
end. So the quorum holds only at the rungs the search is expected to bring ``QUORUM_ARRIVALS`` times the
factor trials to (``num_samples`` times the bracket's share times the fraction of trials that get that
far); at the others Ray's rule decides, among trials that already passed the quorum below.

Ray's rule is relative only: a rung where every network is still at chance level promotes the best of them,
and the space where most settings are bad lost a third of a search's budget that way (BENCHMARKS.md,
section 2). ``ChanceFloorASHA`` (the default, and the base of ``QuorumASHA``) also stops, from the grace
period on, a trial whose validation score is no better than a network that learned nothing (``chance_floor``),
and leaves it out of the rung's record, so that the trials that did learn are ranked among themselves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from ray.tune.schedulers import ASHAScheduler
from ray.tune.schedulers.async_hyperband import _Bracket

QUORUM_ARRIVALS = 2      # x reduction_factor: expected arrivals at a rung for its quorum to hold
CHANCE_Z = 3.0           # standard errors beyond chance a validation score must be to show learning


def chance_floor(val_labels: np.ndarray, metric: str) -> float | None:
    """The ``metric`` of a network that learned nothing, moved ``CHANCE_Z`` standard errors toward better.

    val_accuracy: the share of the commonest class (always answering it), plus CHANCE_Z binomial standard
    errors on ``len(val_labels)`` images. val_loss: the cross-entropy of predicting the class frequencies,
    minus CHANCE_Z standard errors of its mean. None (no floor) for the training metrics, which are measured
    on augmented batches in training mode.
    """
    counts = np.bincount(val_labels)
    share, n = counts / counts.sum(), len(val_labels)
    if metric == "val_accuracy":
        p = share.max()
        return float(p + CHANCE_Z * math.sqrt(p * (1 - p) / n))
    if metric == "val_loss":
        nll = -np.log(share[val_labels])           # each image's loss under the class frequencies
        return float(nll.mean() - CHANCE_Z * nll.std() / math.sqrt(n))
    return None


@dataclass(frozen=True)
class Floor:
    """A chance floor: ``value`` of ``metric``, where ``mode`` says which way is better."""

    metric: str
    mode: str
    value: float

    def reached_by(self, result: dict) -> bool:
        """The result's score is no better than the floor (a result without the metric is not)."""
        score = result.get(self.metric)
        if score is None:
            return False
        return score <= self.value if self.mode == "max" else score >= self.value

    def stops(self, result: dict, epoch: int, grace: int) -> bool:
        """The rule every scheduler here applies: from the grace period on, a trial at the floor stops."""
        return epoch >= grace and self.reached_by(result)


class ChanceFloorASHA(ASHAScheduler):
    """``ASHAScheduler`` that also stops, from ``grace_period`` on, a trial whose score is not better than
    ``floor`` (in the metric's units; None: Ray's ASHA unchanged) and records it at no rung."""

    def __init__(self, *args, floor: float | None = None, grace_period: int = 1, **kwargs):
        super().__init__(*args, grace_period=grace_period, **kwargs)
        self._floor, self._grace = floor, grace_period
        self._at_chance: set[str] = set()          # trials this rule stopped (kept out of the rungs)

    def at_chance(self, result: dict) -> bool:
        if self._floor is None:
            return False
        floor = Floor(self._metric, "max" if self._metric_op > 0 else "min", self._floor)
        return floor.stops(result, result.get(self._time_attr, 0), self._grace)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if self._metric in result and self.at_chance(result):
            self._at_chance.add(trial.trial_id)
            self._num_stopped += 1
            return self.STOP
        return super().on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller, trial, result: dict):
        if trial.trial_id in self._at_chance:
            self._at_chance.discard(trial.trial_id)
            self._trial_info.pop(trial.trial_id, None)
            return None
        return super().on_trial_complete(tune_controller, trial, result)

    def saved_state(self) -> dict:
        """The rung records and the stop count (``search.SchedulerState`` carries them across a restore)."""
        return {"rungs": [[dict(recorded) for _, recorded in bracket._rungs] for bracket in self._brackets],
                "num_stopped": self._num_stopped}

    def restore_state(self, state: dict) -> None:
        for bracket, saved in zip(self._brackets, state["rungs"]):
            for (_, recorded), values in zip(bracket._rungs, saved):
                recorded.clear()
                recorded.update(values)
        self._num_stopped = state["num_stopped"]


class _QuorumBracket(_Bracket):
    quorum_milestones: frozenset = frozenset()

    def cutoff(self, recorded):
        milestone = next(m for m, rung in self._rungs if rung is recorded)
        if milestone in self.quorum_milestones and len(recorded) < self.rf - 1:
            return math.inf          # too few trials at this rung to say this one is in their top 1/rf
        return super().cutoff(recorded)


class QuorumASHA(ChanceFloorASHA):
    """``ChanceFloorASHA`` with the quorum rule above; same arguments plus the search's ``num_samples``
    (None: a quorum at every rung), same rungs, same saved state."""

    def __init__(self, *args, num_samples: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        sizes = np.array([len(b._rungs) for b in self._brackets])
        shares = np.e ** (sizes - sizes.max())                  # how Ray deals new trials to the brackets
        shares = shares / shares.sum()
        for bracket, share in zip(self._brackets, shares):
            bracket.__class__ = _QuorumBracket
            bracket.quorum_milestones = frozenset(quorum_milestones(bracket, share, num_samples))


def quorum_milestones(bracket: _Bracket, share: float, num_samples: int | None) -> list[int]:
    """The bracket's milestones where the search is expected to bring enough trials for a quorum (none in a
    bracket without rungs, whose trials all run to max_t)."""
    if not bracket._rungs:
        return []
    first = min(m for m, _ in bracket._rungs)
    if num_samples is None:
        return [m for m, _ in bracket._rungs]
    # A 1/rf share of the trials at a rung reaches the next: arrivals at milestone m ~ trials * first / m.
    return [m for m, _ in bracket._rungs
            if num_samples * share * first / m >= QUORUM_ARRIVALS * bracket.rf]


def quorum_epochs(scheduler) -> list[int]:
    """The epochs where a rung of this scheduler waits for a quorum (none for Ray's own ASHA)."""
    brackets = getattr(scheduler, "_brackets", ())   # an Optuna pruner has none
    return sorted({m for b in brackets for m in getattr(b, "quorum_milestones", ())})
