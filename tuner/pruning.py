"""Optuna's pruners choosing which trials Ray Tune stops: the alternative to ASHA a space picks with
``scheduler.pruner``.

An Optuna pruner decides from a study's intermediate values, and in a Ray Tune search those arrive at the
driver, not in the trainable: a worker's trial cannot see the other trials' scores. So the decision is made
by a Ray scheduler, ``OptunaPruning``, that keeps an in-memory Optuna study of its own (one Optuna trial per
Ray trial, each epoch's score reported at its epoch), asks the pruner after every result whether the trial
should stop, and tells the study how each trial ended (COMPLETE with its best score, PRUNED, or FAIL). Its
own study rather than the searcher's, so that it works under any searcher (grid search included) and its
state is saved and restored with the scheduler's (``search.SchedulerState``).

- ``median``: Optuna's ``MedianPruner``: from the grace period on, a trial stops when its best score so far
  is worse than the median, at the same epoch, of the trials that ran to the end (once 5 have). It judges
  every epoch, not only rungs, and compares with finished trials only.
- ``hyperband``: Optuna's ``HyperbandPruner`` (successive halving in brackets whose first rung is the grace
  period, times the reduction factor per bracket), Optuna's counterpart of Ray's ASHA with brackets.

The chance floor (``tuner.asha``) applies here as under ASHA: from the grace period on, a trial no better
than chance is stopped, and told to the study as PRUNED.
"""

from __future__ import annotations

import optuna
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from tuner.asha import Floor
from tuner.spaces import PRUNERS, stopper_name

optuna.logging.set_verbosity(optuna.logging.WARNING)

MEDIAN_STARTUP = 5   # trials run to the end before the median pruner stops any (Optuna's default)


def make_pruner(name: str, grace: int, factor: int, max_epochs: int) -> optuna.pruners.BasePruner:
    if name == "median":
        # n_warmup_steps: Optuna never prunes before that step, so the first decision is at the grace period.
        return optuna.pruners.MedianPruner(n_startup_trials=MEDIAN_STARTUP, n_warmup_steps=grace)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=grace, max_resource=max_epochs, reduction_factor=factor)
    raise ValueError(f"unknown pruner {name!r}; choose one of {', '.join(PRUNERS)}")


class OptunaPruning(FIFOScheduler):
    """A Ray scheduler that stops the trials ``pruner`` (a ``PRUNERS`` name other than asha) would prune.
    Trials report every epoch (``search.trial_reporting``) so that the pruner judges each one."""

    def __init__(self, pruner: str, metric: str, mode: str, grace_period: int, reduction_factor: int,
                 max_t: int, floor: float | None = None):
        super().__init__()
        self._metric, self._mode = metric, mode
        self._grace, self._max_t = grace_period, max_t
        self.pruner_name = pruner
        self._floor = None if floor is None else Floor(metric, mode, floor)
        # A fixed name: the Hyperband pruner deals trials to brackets by a hash of it and the trial's number.
        self._study = optuna.create_study(study_name="tuner-pruning",
                                          direction="maximize" if mode == "max" else "minimize",
                                          pruner=make_pruner(pruner, grace_period, reduction_factor, max_t))
        self._trials: dict[str, optuna.Trial] = {}   # Ray trial id -> its trial in the study
        self._best: dict[str, float] = {}      # Ray trial id -> its best score so far
        self._reported: dict[str, int] = {}    # Ray trial id -> last epoch reported (a resume may replay some)
        self._pruned: set[str] = set()         # trials this scheduler stopped
        self._ended: set[str] = set()          # trials told to the study

    def set_search_properties(self, metric, mode, **spec) -> bool:
        return metric in (None, self._metric) and mode in (None, self._mode)   # the search's, set here already

    def _report(self, trial_id: str, result: dict) -> optuna.Trial:
        if trial_id not in self._trials:
            self._trials[trial_id] = self._study.ask()
        ot_trial, better = self._trials[trial_id], max if self._mode == "max" else min
        for epoch in result.get("epochs") or [result]:   # a result carries every epoch since the previous one
            value, step = epoch.get(self._metric), int(epoch.get("epoch", 0) or 0)
            if value is not None and step > self._reported.get(trial_id, 0):
                ot_trial.report(float(value), step)
                self._reported[trial_id] = step
                self._best[trial_id] = better(self._best.get(trial_id, value), value)
        return ot_trial

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if self._metric not in result or trial.trial_id in self._ended:
            return TrialScheduler.CONTINUE
        ot_trial = self._report(trial.trial_id, result)
        epoch = int(result.get("epoch", 0) or 0)
        if epoch >= self._max_t:
            return TrialScheduler.CONTINUE       # its last epoch: it ends on its own, COMPLETE
        at_chance = self._floor is not None and self._floor.stops(result, epoch, self._grace)
        if at_chance or ot_trial.should_prune():
            self._pruned.add(trial.trial_id)
            return TrialScheduler.STOP
        return TrialScheduler.CONTINUE

    def on_trial_complete(self, tune_controller, trial, result: dict):
        trial_id = trial.trial_id
        if trial_id in self._ended:
            return
        if result and self._metric in result:
            self._report(trial_id, result)
        self._ended.add(trial_id)
        if trial_id not in self._trials:
            return     # no result reached it (failed before its first report): nothing to tell; a network that
            #            cannot be built reports epoch 0 and is told below as FAIL
        if trial_id in self._pruned:
            self._study.tell(self._trials[trial_id], state=optuna.trial.TrialState.PRUNED)
        elif trial_id in self._best:
            self._study.tell(self._trials[trial_id], self._best[trial_id])
        else:
            self._study.tell(self._trials[trial_id], state=optuna.trial.TrialState.FAIL)

    def on_trial_error(self, tune_controller, trial):
        # Ray calls this before it retries a trial from its checkpoint (--max-failures) too: the trial goes on,
        # and so does its trial in the study; only an error it is not retried after ends it, as FAIL.
        if not trial.should_recover():
            self.on_trial_remove(tune_controller, trial)

    def on_trial_remove(self, tune_controller, trial):
        if trial.trial_id not in self._ended and trial.trial_id in self._trials:
            self._ended.add(trial.trial_id)
            self._study.tell(self._trials[trial.trial_id], state=optuna.trial.TrialState.FAIL)

    def debug_string(self) -> str:
        return f"{stopper_name(self.pruner_name)}: {len(self._pruned)} trials stopped"

    def saved_state(self) -> dict:
        # One pickle for the study and its trials, so that the restored trials belong to the restored study.
        return {"study": self._study, "trials": self._trials, "best": self._best, "reported": self._reported,
                "pruned": self._pruned, "ended": self._ended}

    def restore_state(self, state: dict) -> None:
        self._study, self._trials, self._best = state["study"], state["trials"], state["best"]
        self._reported, self._pruned, self._ended = state["reported"], state["pruned"], state["ended"]
