"""The search: a space -> a Ray Tune ``Tuner`` with ASHA (stops bad trials early) and Optuna (TPE).

``SearchOptions`` gathers what the command line decides; ``build_tuner`` assembles Ray's own pieces
(Tuner, TuneConfig, RunConfig, CheckpointConfig, FailureConfig, OptunaSearch, ASHAScheduler,
with_parameters, with_resources). Its own: the trainable, how a trial's end is told to TPE
(``FidelityAwareOptuna``, which also queues a Latin-hypercube start), ASHA's chance floor and quorum
(tuner.asha), and Optuna's pruners as the scheduler instead of ASHA (tuner.pruning).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from ray import tune
from ray.tune.schedulers import TrialScheduler
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from tuner.asha import ChanceFloorASHA, Floor, QuorumASHA, chance_floor, quorum_epochs
from tuner.console import SearchProgress, asha_milestones
from tuner.data import TrialData
from tuner.pruning import OptunaPruning
from tuner.sampling import SAMPLER_CLASSES, latin_hypercube, make_sampler
from tuner.spaces import PRUNER_CLASSES, Space
from tuner.trial import Reporting, train_trial

optuna.logging.set_verbosity(optuna.logging.WARNING)
SMOKE = {"num_samples": 2, "max_epochs": 1, "train_images": 1024}   # --smoke: checks a space end to end
REPORT_SECONDS = 10.0   # a trial reports at least this often (s) besides ASHA's rungs and its end


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
    pretrained_from: str = "none"        # where it was read: a registry alias as the version it named
    callbacks: list = field(default_factory=list)
    verbose: int = 1                     # Ray's verbosity (0: nothing printed while the search runs)
    full_output: bool = False            # --verbose: Ray's status table instead of the progress line

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
        folder = outcome_folder(self.storage_path, self.name)
        folder.mkdir(parents=True, exist_ok=True, mode=0o755)   # never group-writable: --resume checks it
        return folder


def outcome_folder(storage_path: str, name: str) -> Path:
    """Where search ``name``'s leaderboard, plots and settings file are (SearchOptions.outcome_dir, not made)."""
    return Path("ray_results").resolve() / name if "://" in storage_path else Path(storage_path.rstrip("/"), name)


def resume_command(opts: SearchOptions) -> str:
    """How to continue the search: its name, and its storage path where it is not the default (the space,
    the defining flags and the tracking store are the search's own on --resume)."""
    from tuner.guards import redact

    default = str(opts.storage_path) == str(Path("ray_results").resolve())
    storage = "" if default else f" --storage-path {redact(str(opts.storage_path))}"
    return f"python -m tuner.run --resume --name {opts.name}{storage}"


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
    and a complete trial's value is its best epoch's, which is what the leaderboard ranks by. A trial whose
    network could not be built is PRUNED with no epoch, below every trial that trained. With the space's
    ``searcher.stopped: value`` instead, both are COMPLETE: a stopped trial with its best score so far, an
    unbuildable one with the worst score.

    With several ``objectives`` (metric, mode) the study is multi-objective (Optuna's TPE samples for the
    Pareto front). Optuna takes no intermediate values for such studies and cannot rank their pruned trials
    by how far they got, so every trial that trained is told COMPLETE with what it reached: its best epoch's
    first objective and its network's other objectives (size, latency). An ASHA-stopped trial is thus a
    real point, one whose first objective is lower than full training would have given. A trial whose
    network could not be built has no size or latency: it is PRUNED, which TPE ranks below every complete
    trial.
    """

    def __init__(self, *args, max_epochs: int, objectives: list[tuple[str, str]] | None = None,
                 stopped: str = "pruned", design: tuple[int, int] = (0, 0), **kwargs):
        super().__init__(*args, **kwargs)
        self._design = design            # (trials, seed): a Latin hypercube queued after points_to_evaluate
        self._max_epochs = max_epochs
        self._stopped = stopped          # "value": an ASHA-stopped trial is COMPLETE with its best score so far
        self._objectives = list(objectives or [])
        self._best: dict[str, float] = {}
        self._reported: dict[str, int] = {}    # trial id -> last epoch told to Optuna (a resume may replay some)

    @property
    def multi_objective(self) -> bool:
        return len(self._objectives) > 1

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        if self.multi_objective:   # Tune passes the first objective (the scheduler's); the study takes them all
            metric, mode = [m for m, _ in self._objectives], [d for _, d in self._objectives]
        if not super().set_search_properties(metric, mode, config, **spec):
            return False   # set already (a restored searcher keeps its study, queued trials included)
        for point in latin_hypercube(self._space, *self._design):
            self._ot_study.enqueue_trial(point)
        return True

    def _first(self) -> tuple[str, str]:
        return self._objectives[0] if self.multi_objective else (self.metric, self.mode)

    def on_trial_result(self, trial_id: str, result: dict):
        if trial_id not in self._completed_trials:
            self._record(trial_id, result)

    def _record(self, trial_id: str, result: dict) -> None:
        # A result carries every epoch since the trial's previous one: each is an intermediate value at its
        # epoch (Ray's OptunaSearch would report one value per result, at the result's count).
        metric, mode = self._first()
        for epoch in result.get("epochs") or [result]:
            value, step = epoch.get(metric), int(epoch.get("epoch", 0))
            if value is None or step <= self._reported.get(trial_id, 0):
                continue
            if not self.multi_objective:
                self._ot_trials[trial_id].report(value, step)
            self._reported[trial_id] = step
            best = self._best.get(trial_id)
            if best is None or (value > best if mode == "max" else value < best):
                self._best[trial_id] = value

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        if error or not result or trial_id in self._completed_trials:
            return super().on_trial_complete(trial_id, result, error)
        # The result the scheduler stopped the trial on (ASHA at a rung or at max_t) never reaches
        # on_trial_result: its epochs are counted here.
        self._record(trial_id, result)
        if self.multi_objective:
            return self._complete_multi(trial_id, result)
        stopped_early = not result.get("end_reason") and 0 < result.get("epoch", 0) < self._max_epochs
        if self._stopped == "pruned" and (stopped_early or untrained(result)):
            # Optuna's TPE ranks every COMPLETE trial above every PRUNED one: a network that could not be
            # built, told as complete with the worst score, would count as better than any trial ASHA
            # stopped. Pruned without an epoch, it ranks below them all.
            self._tell_pruned(trial_id)
            return None
        best = self._best.get(trial_id, result.get(self.metric))
        return super().on_trial_complete(trial_id, {**result, self.metric: best}, error)

    def _tell_pruned(self, trial_id: str) -> None:
        self._ot_study.tell(self._ot_trials[trial_id], state=optuna.trial.TrialState.PRUNED)
        self._completed_trials.add(trial_id)

    def _complete_multi(self, trial_id: str, result: dict):
        first = self._objectives[0][0]
        values = {first: self._best.get(trial_id, result.get(first)),
                  **{m: result.get(m) for m, _ in self._objectives[1:]}}
        if any(v is None or v != v for v in values.values()):   # no network: no size, no latency (NaN)
            return self._tell_pruned(trial_id)
        return super().on_trial_complete(trial_id, {**result, **values}, False)


def untrained(result: dict) -> bool:
    """A trial that ended before its first epoch (its network could not be built)."""
    return bool(result.get("end_reason")) and not result.get("epoch")


def make_searcher(space: Space, opts: SearchOptions):
    if opts.grid:
        return None   # Ray's default BasicVariantGenerator expands grid_search over the choices
    settings = space.searcher
    sampler = make_sampler(settings, opts.seed, space.num_samples)
    designed = max(0, settings.startup(space.num_samples) - len(space.start))
    searcher = FidelityAwareOptuna(sampler=sampler, points_to_evaluate=space.start or None,
                                   max_epochs=space.max_epochs, objectives=space.objectives,
                                   stopped=settings.stopped, design=(
                                       designed if settings.startup_design == "latin_hypercube" else 0, opts.seed))
    if opts.max_concurrent:
        searcher = ConcurrencyLimiter(searcher, max_concurrent=opts.max_concurrent)
    return searcher


def search_floor(space: Space, data: TrialData | None) -> Floor | None:
    """The chance floor ASHA stops trials at in this search: from its validation labels, unless the space
    turns it off or its metric has none."""
    value = chance_floor(data.labels[data.val_idx], space.metric) if data and space.stop_at_chance else None
    return None if value is None else Floor(space.metric, space.mode, value)


def make_scheduler(space: Space, data: TrialData | None = None) -> TrialScheduler:
    """ASHA with the space's settings (or the Optuna pruner its ``scheduler.pruner`` names); with ``data``,
    and unless the space turns it off, trials still at chance level on its validation images are stopped
    from the grace period on (tuner.asha)."""
    floor = search_floor(space, data)
    if space.pruner != "asha":
        return OptunaPruning(space.pruner, space.metric, space.mode, space.grace_period, space.reduction_factor,
                             space.max_epochs, floor=floor and floor.value)
    # time_attr "epoch" is the trial's own count, so it is right after a restore from a checkpoint too.
    common = dict(time_attr="epoch", max_t=space.max_epochs, grace_period=space.grace_period,
                  reduction_factor=space.reduction_factor, brackets=space.brackets, floor=floor and floor.value)
    if space.quorum:
        return QuorumASHA(**common, num_samples=space.num_samples)
    return ChanceFloorASHA(**common)


class SchedulerState(tune.Callback):
    """Carries the scheduler's records across a restore: ASHA's rungs (the score each trial had at each
    milestone), or an Optuna pruner's study.

    Ray snapshots the searcher's and the callbacks' state with the experiment, but not the scheduler's:
    ``Tuner.restore`` brings back the scheduler as it was pickled when the search started, with empty
    records, and it would then cut trials against a partial record. This callback holds a reference to the
    scheduler (pickled together with it, so the reference survives the restore) and saves and restores the
    records as its own state.
    """

    def __init__(self, scheduler: ChanceFloorASHA | OptunaPruning):
        self.scheduler = scheduler

    def get_state(self) -> dict:
        return self.scheduler.saved_state()

    def set_state(self, state: dict) -> None:
        self.scheduler.restore_state(state)


def trial_reporting(space: Space) -> Reporting:
    """When trials report: at ASHA's rungs (its milestones before max_epochs), at their end, and at least
    every REPORT_SECONDS."""
    if space.pruner != "asha":
        return Reporting()   # every epoch: an Optuna pruner may decide at any of them
    rungs = asha_milestones(space.grace_period, space.reduction_factor, space.max_epochs)[:-1]
    return Reporting(tuple(rungs), REPORT_SECONDS)


def make_trainable(data: TrialData, opts: SearchOptions, space: Space):
    """The trainable with its resources; ``space`` is the effective space (its budget sets when to report)."""
    resources = {"cpu": opts.cpus_per_trial, "gpu": opts.gpus_per_trial}
    reporting = trial_reporting(space)
    # with_parameters puts the dataset in Ray's object store once; every trial reads that one copy.
    weights = {} if opts.pretrained is None else {"pretrained": opts.pretrained}   # the same for pretrained weights
    return tune.with_resources(tune.with_parameters(train_trial, data=data, reporting=reporting, **weights),
                               resources)


def trial_name(trial) -> str:
    return f"trial_{trial.trial_id}"   # short, stable names: the config lives in params.json and MLflow


def progress_table(space: Space, opts: SearchOptions) -> tune.ProgressReporter:
    """One progress line (tuner.console); with --verbose, Ray's status table with the searched settings."""
    if not opts.full_output:
        return SearchProgress(space.metric, space.mode, (space.grace_period, space.reduction_factor, space.max_epochs),
                              space.num_samples)
    metrics = {"epoch": "epoch", space.metric: space.metric, "val_loss": "val_loss", "train_loss": "train_loss"}
    return tune.CLIReporter(parameter_columns=list(space.search), metric_columns=metrics, sort_by_metric=True,
                            max_report_frequency=15, max_progress_rows=12)


def tune_config(space: Space, opts: SearchOptions, scheduler: TrialScheduler) -> tune.TuneConfig:
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
        progress_reporter=progress_table(space, opts),
        # A trial's latest checkpoint holds what resuming needs and its best epoch's weights (scored on
        # the test set). Ray deletes checkpoints beyond num_to_keep and snapshots the experiment every
        # num_to_keep checkpoints of a trial so that its snapshot never names a deleted one; a snapshot
        # written late (a busy driver) can still name one, so four are kept, not the newest two.
        checkpoint_config=tune.CheckpointConfig(num_to_keep=4),
        failure_config=tune.FailureConfig(max_failures=opts.max_failures),
    )


def objectives_text(objectives: list[tuple[str, str]]) -> str:
    """``val_accuracy:max,params:min``: how the search run's params record a multi-objective search."""
    return ",".join(f"{metric}:{mode}" for metric, mode in objectives)


def search_settings(space: Space, opts: SearchOptions) -> dict:
    """The resolved search: what was searched, how, and on what (logged as params and as a JSON artifact)."""
    searcher = {"searcher": "grid (BasicVariantGenerator)"} if opts.grid else {
        "searcher": f"OptunaSearch ({SAMPLER_CLASSES[space.searcher.sampler]}), ASHA-stopped trials as "
                    f"{space.searcher.stopped}",
        "searcher_seed": opts.seed, "start_points": len(space.start), **space.searcher.describe(space.num_samples)}
    if space.multi_objective:
        searcher["objectives"] = objectives_text(space.objectives)
        if not opts.grid:
            searcher["searcher"] = "OptunaSearch (multi-objective TPESampler), ASHA-stopped trials as complete"

    return {
        "space": space.name, "space_file": str(space.path), "dataset": space.dataset, "model": space.model,
        "metric": space.metric, "mode": space.mode, "val_fraction": space.val_fraction, "seed": opts.seed,
        "num_samples": space.num_samples, **searcher,
        "scheduler": "ASHAScheduler" if space.pruner == "asha" else f"OptunaPruning ({PRUNER_CLASSES[space.pruner]})",
        "pruner": space.pruner, "time_attr": "epoch", "max_t": space.max_epochs,
        "grace_period": space.grace_period, "reduction_factor": space.reduction_factor, "brackets": space.brackets,
        "quorum": space.quorum, "quorum_epochs": quorum_epochs(make_scheduler(space)),
        "stop_at_chance": space.stop_at_chance, "pretrained_from": opts.pretrained_from,
        "cpus_per_trial": opts.cpus_per_trial, "gpus_per_trial": opts.gpus_per_trial,
        "max_concurrent": opts.max_concurrent or "auto", "max_failures": opts.max_failures,
        "storage_path": str(opts.storage_path), "fixed": space.fixed,
        "search": {k: {kind: args} for k, (kind, args) in space.search.items()},
    }


def build_tuner(space: Space, data: TrialData, opts: SearchOptions) -> tune.Tuner:
    space = effective_space(space, opts)
    scheduler = make_scheduler(space, data)
    return tune.Tuner(make_trainable(data, opts, space),
                      param_space=space.grid_space() if opts.grid else space.param_space(),
                      tune_config=tune_config(space, opts, scheduler),
                      run_config=run_config(space, opts, [*opts.callbacks, SchedulerState(scheduler)]))


def asha_rung(epoch: int, grace: int, factor: int) -> int | None:
    """Index of the ASHA rung at ``epoch`` (milestones grace * factor**k), or None if it is not one."""
    k, milestone = 0, grace
    while milestone < epoch:
        milestone, k = milestone * factor, k + 1
    return k if milestone == epoch else None


def end_reason(error: str | None, last: dict, grace: int, factor: int, max_epochs: int,
               floor: Floor | None = None, by: str = "ASHA") -> str:
    """Why a trial ended: an error, its own word (completed, early-stopped, invalid), or the scheduler's
    stop (``by``: ASHA, or an Optuna pruner); with the search's chance ``floor``, a stop of a network no
    better than chance says so."""
    if error:
        lines = [ln for ln in str(error).strip().splitlines() if ln.strip()]
        return f"failed: {lines[-1].strip()[:300] if lines else 'error'}"
    if last.get("end_reason"):
        return last["end_reason"]
    epoch = int(last.get("epoch", 0) or 0)
    if 0 < epoch < max_epochs:
        if floor and floor.stops(last, epoch, grace):
            return (f"stopped by {by} at chance level at epoch {epoch} ({floor.metric} {last[floor.metric]:.4f}, "
                    f"chance floor {floor.value:.4f})")
        rung = asha_rung(epoch, grace, factor) if by == "ASHA" else None
        return f"stopped by {by} at epoch {epoch}" + (f" (rung {rung})" if rung is not None else "")
    return "completed" if epoch >= max_epochs else "stopped before its first epoch"
