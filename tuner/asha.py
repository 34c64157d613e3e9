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
"""

from __future__ import annotations

import math

from ray.tune.schedulers import ASHAScheduler
from ray.tune.schedulers.async_hyperband import _Bracket


class _QuorumBracket(_Bracket):
    def cutoff(self, recorded):
        if len(recorded) < self.rf - 1:
            return math.inf          # too few trials at this rung to say this one is in their top 1/rf
        return super().cutoff(recorded)


class QuorumASHA(ASHAScheduler):
    """``ASHAScheduler`` with the quorum rule above; same arguments, same rungs, same saved state."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for bracket in self._brackets:
            bracket.__class__ = _QuorumBracket
