"""The search: a space -> a Ray Tune ``Tuner`` with ASHA (stops bad trials early) and Optuna (TPE).

``SearchOptions`` gathers what the command line decides; ``build_tuner`` assembles Ray's own pieces
(Tuner, TuneConfig, RunConfig, CheckpointConfig, FailureConfig, OptunaSearch, ASHAScheduler,
with_parameters, with_resources) and nothing of its own but the trainable.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from tuner.data import TrialData
from tuner.spaces import Space
from tuner.trial import train_trial

optuna.logging.set_verbosity(optuna.logging.WARNING)
SMOKE = {"num_samples": 2, "max_epochs": 1, "train_images": 1024}   # --smoke: checks a space end to end


@dataclass
class SearchOptions:
    name: str
    storage_path: str                    # a local folder (absolute) or a URI every node can reach (s3://...)
    num_samples: int
    max_epochs: int
    cpus_per_trial: float
    gpus_per_trial: float
    max_concurrent: int | None = None    # None: as many as the resources allow
    seed: int = 0
    max_failures: int = 1                # retries of a crashed trial, from its last checkpoint
    grid: bool = False                   # every choice as an exhaustive grid instead of TPE
    overrides: dict = field(default_factory=dict)
    pretrained: dict | None = None       # state dict every trial starts from (tuner.pretrained)
    callbacks: list = field(default_factory=list)
    verbose: int = 1

    @property
    def remote_storage(self) -> bool:
        return "://" in self.storage_path

    @property
    def experiment_path(self) -> str:
        return f"{self.storage_path.rstrip('/')}/{self.name}"

    @property
    def outcome_dir(self) -> Path:
        """A local folder for the leaderboard and plots: the experiment's own, or ./ray_results/NAME when
        results live in object storage."""
        folder = Path("ray_results").resolve() / self.name if self.remote_storage else Path(self.experiment_path)
        folder.mkdir(parents=True, exist_ok=True)
        return folder


def effective_space(space: Space, opts: SearchOptions) -> Space:
    """The space with the command line's budget and ``--set`` overrides applied."""
    grace = min(space.grace_period, opts.max_epochs)
    search = {k: v for k, v in space.search.items() if k not in opts.overrides}
    start = [{k: v for k, v in p.items() if k in search} for p in space.start]   # a --set key is no longer searched
    return dataclasses.replace(space, max_epochs=opts.max_epochs, grace_period=grace, num_samples=opts.num_samples,
                               fixed={**space.fixed, **opts.overrides, "seed": opts.seed}, search=search, start=start)


class FidelityAwareOptuna(OptunaSearch):
    """OptunaSearch that tells TPE how each trial really ended.

    Ray's OptunaSearch records every finished trial as COMPLETE with its last score, so a trial ASHA stopped
    at epoch 2 competes, on its epoch-2 score, with trials trained to the end. Here a trial stopped before
    ``max_epochs`` without an end of its own is PRUNED (TPE ranks pruned trials below complete ones, by how
    far they got and then by their last score: the per-epoch scores are reported to Optuna as they come),
    and a complete trial's value is its best epoch's, which is what the leaderboard ranks by.
    """

    def __init__(self, *args, max_epochs: int, **kwargs):
        super().__init__(*args, **kwargs)
        self._max_epochs = max_epochs
        self._best: dict[str, float] = {}

    def on_trial_result(self, trial_id: str, result: dict):
        super().on_trial_result(trial_id, result)
        value, best = result.get(self.metric), self._best.get(trial_id)
        if value is not None and (best is None or (value > best if self.mode == "max" else value < best)):
            self._best[trial_id] = value

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        if error or not result or trial_id in self._completed_trials:
            return super().on_trial_complete(trial_id, result, error)
        if not result.get("end_reason") and 0 < result.get("epoch", 0) < self._max_epochs:
            self._ot_study.tell(self._ot_trials[trial_id], state=optuna.trial.TrialState.PRUNED)
            self._completed_trials.add(trial_id)
            return None
        best = self._best.get(trial_id, result.get(self.metric))
        return super().on_trial_complete(trial_id, {**result, self.metric: best}, error)


def startup_trials(space: Space) -> int:
    """Random trials before TPE models the results: a quarter of the budget, 3 to 10."""
    return min(10, max(3, space.num_samples // 4))


def make_searcher(space: Space, opts: SearchOptions):
    if opts.grid:
        return None   # Ray's default BasicVariantGenerator expands grid_search over the choices
    sampler = optuna.samplers.TPESampler(seed=opts.seed, n_startup_trials=startup_trials(space))
    searcher = FidelityAwareOptuna(sampler=sampler, points_to_evaluate=space.start or None,
                                   max_epochs=space.max_epochs)
    if opts.max_concurrent:
        searcher = ConcurrencyLimiter(searcher, max_concurrent=opts.max_concurrent)
    return searcher


def make_scheduler(space: Space) -> ASHAScheduler:
    # time_attr "epoch" is the trial's own count, so it is right after a restore from a checkpoint too.
    return ASHAScheduler(time_attr="epoch", max_t=space.max_epochs, grace_period=space.grace_period,
                         reduction_factor=space.reduction_factor)


class SchedulerState(tune.Callback):
    """Carries ASHA's rung records (the score each trial had at each milestone) across a restore.

    Ray snapshots the searcher's and the callbacks' state with the experiment, but not the scheduler's:
    ``Tuner.restore`` brings back the scheduler as it was pickled when the search started, with empty
    rungs, and it would then cut trials against a partial record. This callback holds a reference to the
    scheduler (pickled together with it, so the reference survives the restore) and saves and restores the
    records as its own state.
    """

    def __init__(self, scheduler: ASHAScheduler):
        self.scheduler = scheduler

    def get_state(self) -> dict:
        rungs = [[dict(recorded) for _, recorded in bracket._rungs] for bracket in self.scheduler._brackets]
        return {"rungs": rungs, "num_stopped": self.scheduler._num_stopped}

    def set_state(self, state: dict) -> None:
        for bracket, saved in zip(self.scheduler._brackets, state["rungs"]):
            for (_, recorded), values in zip(bracket._rungs, saved):
                recorded.clear()
                recorded.update(values)
        self.scheduler._num_stopped = state["num_stopped"]


def make_trainable(data: TrialData, opts: SearchOptions):
    resources = {"cpu": opts.cpus_per_trial, "gpu": opts.gpus_per_trial}
    # with_parameters puts the dataset in Ray's object store once; every trial reads that one copy.
    weights = {} if opts.pretrained is None else {"pretrained": opts.pretrained}   # the same for pretrained weights
    return tune.with_resources(tune.with_parameters(train_trial, data=data, **weights), resources)


def trial_name(trial) -> str:
    return f"trial_{trial.trial_id}"   # short, stable names: the config lives in params.json and MLflow


def progress_table(space: Space) -> tune.CLIReporter:
    metrics = {"epoch": "epoch", space.metric: space.metric, "val_loss": "val_loss", "train_loss": "train_loss"}
    return tune.CLIReporter(parameter_columns=list(space.search), metric_columns=metrics, sort_by_metric=True,
                            max_report_frequency=15, max_progress_rows=12)


def tune_config(space: Space, opts: SearchOptions, scheduler: ASHAScheduler) -> tune.TuneConfig:
    return tune.TuneConfig(
        metric=space.metric, mode=space.mode, search_alg=make_searcher(space, opts),
        scheduler=scheduler, num_samples=1 if opts.grid else space.num_samples,
        max_concurrent_trials=opts.max_concurrent if opts.grid else None,
        reuse_actors=True,   # a worker keeps its dataset on the device across trials
        trial_name_creator=trial_name, trial_dirname_creator=trial_name,
    )


def run_config(space: Space, opts: SearchOptions, callbacks: list) -> tune.RunConfig:
    return tune.RunConfig(
        name=opts.name, storage_path=str(opts.storage_path), callbacks=callbacks, verbose=opts.verbose,
        progress_reporter=progress_table(space),
        # Keep each trial's two best checkpoints (the best is scored on the test set) and its latest one
        # (Ray always keeps the latest, for resuming). Ray snapshots the experiment every num_to_keep
        # checkpoints of a trial, so 1 would snapshot after every epoch.
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2, checkpoint_score_attribute=space.metric,
                                                checkpoint_score_order=space.mode),
        failure_config=tune.FailureConfig(max_failures=opts.max_failures),
    )


def search_settings(space: Space, opts: SearchOptions) -> dict:
    """The resolved search: what was searched, how, and on what (logged as params and as a JSON artifact)."""
    searcher = {"searcher": "grid (BasicVariantGenerator)"} if opts.grid else {
        "searcher": "OptunaSearch (TPESampler), ASHA-stopped trials as pruned", "searcher_seed": opts.seed, "startup_trials": startup_trials(space),
        "start_points": len(space.start)}
    return {
        "space": space.name, "space_file": str(space.path), "dataset": space.dataset, "model": space.model,
        "metric": space.metric, "mode": space.mode, "val_fraction": space.val_fraction, "seed": opts.seed,
        "num_samples": space.num_samples, **searcher,
        "scheduler": "ASHAScheduler", "time_attr": "epoch", "max_t": space.max_epochs,
        "grace_period": space.grace_period, "reduction_factor": space.reduction_factor,
        "cpus_per_trial": opts.cpus_per_trial, "gpus_per_trial": opts.gpus_per_trial,
        "max_concurrent": opts.max_concurrent or "auto", "max_failures": opts.max_failures,
        "storage_path": str(opts.storage_path), "fixed": space.fixed,
        "search": {k: {kind: args} for k, (kind, args) in space.search.items()},
    }


def build_tuner(space: Space, data: TrialData, opts: SearchOptions) -> tune.Tuner:
    space = effective_space(space, opts)
    scheduler = make_scheduler(space)
    return tune.Tuner(make_trainable(data, opts),
                      param_space=space.grid_space() if opts.grid else space.param_space(),
                      tune_config=tune_config(space, opts, scheduler),
                      run_config=run_config(space, opts, [*opts.callbacks, SchedulerState(scheduler)]))


def asha_rung(epoch: int, grace: int, factor: int) -> int | None:
    """Index of the ASHA rung at ``epoch`` (milestones grace * factor**k), or None if it is not one."""
    k, milestone = 0, grace
    while milestone < epoch:
        milestone, k = milestone * factor, k + 1
    return k if milestone == epoch else None


def end_reason(error: str | None, last: dict, grace: int, factor: int, max_epochs: int) -> str:
    """Why a trial ended: an error, its own word (completed, early-stopped, invalid), or ASHA's stop."""
    if error:
        lines = [ln for ln in str(error).strip().splitlines() if ln.strip()]
        return f"failed: {lines[-1].strip()[:300] if lines else 'error'}"
    if last.get("end_reason"):
        return last["end_reason"]
    epoch = int(last.get("epoch", 0) or 0)
    if 0 < epoch < max_epochs:
        rung = asha_rung(epoch, grace, factor)
        return f"stopped by ASHA at epoch {epoch}" + (f" (rung {rung})" if rung is not None else "")
    return "completed" if epoch >= max_epochs else "stopped before its first epoch"
