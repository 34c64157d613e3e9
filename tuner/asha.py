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
"""

from __future__ import annotations

import math

import numpy as np
from ray.tune.schedulers import ASHAScheduler
from ray.tune.schedulers.async_hyperband import _Bracket

QUORUM_ARRIVALS = 2      # x reduction_factor: expected arrivals at a rung for its quorum to hold


class _QuorumBracket(_Bracket):
    quorum_milestones: frozenset = frozenset()

    def cutoff(self, recorded):
        milestone = next(m for m, rung in self._rungs if rung is recorded)
        if milestone in self.quorum_milestones and len(recorded) < self.rf - 1:
            return math.inf          # too few trials at this rung to say this one is in their top 1/rf
        return super().cutoff(recorded)


class QuorumASHA(ASHAScheduler):
    """``ASHAScheduler`` with the quorum rule above; same arguments plus the search's ``num_samples`` (None:
    a quorum at every rung), same rungs, same saved state."""

    def __init__(self, *args, num_samples: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        sizes = np.array([len(b._rungs) for b in self._brackets])
        shares = np.e ** (sizes - sizes.max())                  # how Ray deals new trials to the brackets
        shares = shares / shares.sum()
        for bracket, share in zip(self._brackets, shares):
            bracket.__class__ = _QuorumBracket
            bracket.quorum_milestones = frozenset(quorum_milestones(bracket, share, num_samples))


def quorum_milestones(bracket: _Bracket, share: float, num_samples: int | None) -> list[int]:
    """The bracket's milestones where the search is expected to bring enough trials for a quorum."""
    first = min(m for m, _ in bracket._rungs)
    if num_samples is None:
        return [m for m, _ in bracket._rungs]
    # A 1/rf share of the trials at a rung reaches the next: arrivals at milestone m ~ trials * first / m.
    return [m for m, _ in bracket._rungs
            if num_samples * share * first / m >= QUORUM_ARRIVALS * bracket.rf]


def quorum_epochs(scheduler: ASHAScheduler) -> list[int]:
    """The epochs where a rung of this scheduler waits for a quorum (none for Ray's own ASHA)."""
    return sorted({m for b in scheduler._brackets for m in getattr(b, "quorum_milestones", ())})
