"""MLflow bookkeeping of a search: one parent run per search, one nested child run per trial.

All writes happen in the driver: Ray workers never talk to MLflow, so an sqlite store works for any
number of trials, and a tracking server needs to be reachable from the driver only.

Ray's own ``MLflowLoggerCallback`` writes flat, unrelated runs (ray issues 19978, 19909) and cannot adopt
the runs of an interrupted search, so ``TrialRuns`` is a small ``ray.tune.Callback`` of our own: it nests
each trial's run under the search's run (the ``mlflow.parentRunId`` tag), finds the runs a resumed search
already has (by the ``tuner.trial_id`` tag) and never logs a step twice.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from ray.tune import Callback

from tuner.asha import Floor
from tuner.costs import COST_METRICS
from tuner.guards import redact
from tuner.search import end_reason
from tuner.store import artifact_location

log = logging.getLogger("tuner.tracking")

PARENT_TAG = "mlflow.parentRunId"
EPOCH_METRICS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "epoch_seconds",
                 "images_per_second", "epoch", "eval_seconds",
                 # what the trial spent besides training, on the epoch after it: start, checkpoint, report
                 "setup_seconds", "checkpoint_seconds", "report_seconds",
                 *COST_METRICS)   # on the epoch of the trial's first report: size and latency (tuner.costs)
BATCH_LIMIT = 1000             # metrics per MLflow log_batch call at most
OFFLINE_RETRY_SECONDS = 30.0   # after a failed write, skip MLflow this long instead of stalling the search
FAILED = object()              # what SafeClient.call returns when MLflow did not take the call
_FULL_URIS: dict[str, str] = {}   # redacted -> as given: Ray pickles clients into the storage path redacted


@dataclass
class Tracking:
    """Where a search is tracked: the store, the experiment, the search's run, the trials' callback."""

    uri: str
    experiment_id: str
    parent_run_id: str
    trial_runs: "TrialRuns"


def trial_error(trial) -> str:
    """What a failed trial raised, from the file Ray writes it to (a Ray ``Trial`` keeps no message); its
    last line, which ``end_reason`` takes, is the exception."""
    try:
        text = Path(trial.error_file).read_text(errors="replace") if trial.error_file else ""
    except OSError:
        text = ""
    return text.strip() or "error (Ray wrote no error file)"


class SafeClient:
    """An MlflowClient whose failures are recorded, not raised: a tracking server that goes away must not
    kill the search. After a failure it stays quiet for OFFLINE_RETRY_SECONDS, then tries again."""

    def __init__(self, uri: str):
        self.uri = uri
        _FULL_URIS[redact(uri)] = uri
        self.client = MlflowClient(uri, registry_uri=uri)
        self.missed: list[str] = []
        self.seconds = 0.0                     # spent in MLflow calls (benchmarks/overhead.py reads it)
        self._offline_until = 0.0

    @property
    def offline(self) -> bool:
        return time.monotonic() < self._offline_until

    def call(self, what: str, method: str, *args, **kwargs):
        if time.monotonic() < self._offline_until:
            self.missed.append(what)
            return FAILED
        start = time.perf_counter()
        try:
            return getattr(self.client, method)(*args, **kwargs)
        except Exception as exc:
            if time.monotonic() >= self._offline_until:
                log.warning("MLflow at %s failed (%s: %s); not logged: %s. The search goes on.",
                            redact(self.uri), type(exc).__name__,
                            redact(str(exc).splitlines()[0][:200]) if str(exc) else "", what)
            self._offline_until = time.monotonic() + OFFLINE_RETRY_SECONDS
            self.missed.append(what)
            return FAILED
        finally:
            self.seconds += time.perf_counter() - start

    def __getstate__(self):
        # Ray pickles callbacks into the storage path: clients do not travel, credentials are not written.
        return {"uri": redact(self.uri), "missed": self.missed}

    def __setstate__(self, state):
        self.__init__(_FULL_URIS.get(state["uri"], state["uri"]))   # a resumed driver gave the full URI
        self.missed = state["missed"]


def ensure_experiment(client: MlflowClient, uri: str, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    return client.create_experiment(name, artifact_location=artifact_location(uri, name))


def find_parent_run(client: MlflowClient, experiment_id: str, search_name: str, storage: str):
    runs = client.search_runs([experiment_id], filter_string=f"tags.`tuner.search` = '{search_name}'",
                              max_results=50)
    runs = [r for r in runs if r.data.tags.get("tuner.storage") == storage and PARENT_TAG not in r.data.tags]
    return runs[0] if runs else None


def flat_params(config: dict, prefix: str = "") -> list[Param]:
    """MLflow params from a dict; nested dicts become dotted keys (``search.lr``)."""
    out = []
    for k, v in sorted(config.items()):
        if isinstance(v, dict):
            out += flat_params(v, f"{prefix}{k}.")
        else:
            out.append(Param(f"{prefix}{k}", str(v)[:6000]))
    return out


class TrialRuns(Callback):
    """Ray Tune callback: a nested MLflow child run per trial, metrics every epoch with step=epoch."""

    # The instance Ray actually runs, by search run: on a resume Ray uses the callback it pickled when the
    # search started, not the one the driver built, and the driver needs its records afterwards.
    _live: dict[str, "TrialRuns"] = {}
    datasets: tuple = ()   # what a callback pickled before trials carried datasets has
    floor = None           # and before end reasons named the chance floor
    stopper = "ASHA"       # and before a search could stop trials by an Optuna pruner

    def __init__(self, uri: str, experiment_id: str, parent_run_id: str, asha: tuple[int, int, int],
                 datasets: list | None = None, floor: Floor | None = None, stopper: str = "ASHA"):
        self.mlflow = SafeClient(uri)
        self.datasets = tuple(datasets or ())   # every trial's train and validation split (tuner.data_inputs)
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.asha = asha                       # (grace_period, reduction_factor, max_epochs)
        self.floor = floor                     # the search's chance floor (tuner.asha), for end reasons
        self.stopper = stopper                 # who stops trials early: ASHA, or an Optuna pruner
        self.runs: dict[str, str] = {}         # trial id -> run id
        self.logged: dict[str, int] = {}       # run id -> last epoch logged
        self.nodes: dict[str, str] = {}        # run id -> Ray node that last ran the trial

    @classmethod
    def live(cls, parent_run_id: str) -> "TrialRuns | None":
        return cls._live.get(parent_run_id)

    def records(self) -> "TrialRuns":
        """The instance Ray ran in this process; else this one with the trials' runs read from MLflow: with
        Ray Client (``ray://``) the Tuner, and the callback with it, runs on the cluster."""
        live = TrialRuns.live(self.parent_run_id)
        if live is None:
            self.setup()
            live = self
        return live

    def setup(self, **info):
        """Adopt the child runs this search already has (a resumed search continues them)."""
        TrialRuns._live[self.parent_run_id] = self
        runs = self.mlflow.call("existing trial runs", "search_runs", [self.experiment_id],
                                filter_string=f"tags.`{PARENT_TAG}` = '{self.parent_run_id}'", max_results=10000)
        for run in [] if runs is FAILED else runs:
            trial_id = run.data.tags.get("tuner.trial_id")
            if trial_id:
                self.runs[trial_id] = run.info.run_id
                self.logged[run.info.run_id] = int(run.data.metrics.get("epoch", 0))

    def run_id(self, trial) -> str | None:
        if trial.trial_id not in self.runs:
            tags = {PARENT_TAG: self.parent_run_id, "tuner.trial_id": trial.trial_id}
            run = self.mlflow.call(f"run of trial {trial.trial_id}", "create_run", self.experiment_id,
                                   run_name=f"trial_{trial.trial_id}", tags=tags)
            if run is FAILED:
                return None
            self.runs[trial.trial_id] = run.info.run_id
            self.logged[run.info.run_id] = 0
            self.mlflow.call(f"params of trial {trial.trial_id}", "log_batch", run.info.run_id,
                             params=flat_params(trial.config))
            log_datasets(self.mlflow, run.info.run_id, self.datasets, f"data of trial {trial.trial_id}")
        return self.runs[trial.trial_id]

    def on_trial_start(self, iteration, trials, trial, **info):
        run_id = self.run_id(trial)
        if run_id:
            self.mlflow.call(f"status of trial {trial.trial_id}", "update_run", run_id, status="RUNNING")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        run_id = self.run_id(trial)
        if run_id is not None and result.get("node_id") and self.nodes.get(run_id) != result["node_id"]:
            self.nodes[run_id] = result["node_id"]
            self.mlflow.call(f"node of trial {trial.trial_id}", "set_tag", run_id, "tuner.node_id", result["node_id"])
        # A result carries every epoch since the trial's last one; epoch 0 is a rejected config, and an epoch
        # already logged is a replay after a restart from an older checkpoint.
        epochs = [e for e in result.get("epochs") or [] if int(e.get("epoch", 0)) > self.logged.get(run_id, 0)]
        if run_id is None or not epochs:
            return
        now = int(time.time() * 1000)
        metrics = [Metric(k, float(e[k]), now, int(e["epoch"])) for e in epochs for k in EPOCH_METRICS if k in e]
        last = int(epochs[-1]["epoch"])
        for i in range(0, len(metrics), BATCH_LIMIT):
            if self.mlflow.call(f"epochs up to {last} of trial {trial.trial_id}", "log_batch", run_id,
                                metrics=metrics[i:i + BATCH_LIMIT]) is FAILED:
                return
        self.logged[run_id] = last

    def _finish(self, trial, status: str):
        run_id = self.run_id(trial)
        if run_id is None:
            return
        reason = end_reason(trial_error(trial) if trial.status == "ERROR" else None,
                            trial.last_result or {}, *self.asha, self.floor, self.stopper)
        tags = [RunTag("tuner.end_reason", reason), RunTag("tuner.status", trial.status)]
        self.mlflow.call(f"end of trial {trial.trial_id}", "log_batch", run_id, tags=tags)
        self.mlflow.call(f"end of trial {trial.trial_id}", "set_terminated", run_id, status=status)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._finish(trial, "FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._finish(trial, "FAILED")

    def on_trial_recover(self, iteration, trials, trial, **info):
        run_id = self.run_id(trial)
        if run_id:
            retries = int(trial.run_metadata.num_failures)
            self.mlflow.call(f"retry of trial {trial.trial_id}", "set_tag", run_id, "tuner.retries", str(retries))


def log_datasets(client, run_id: str, inputs, what: str = "datasets") -> None:
    """The data a run was trained, validated or tested on (tuner.data_inputs), as MLflow dataset inputs:
    the UI's Dataset column. ``client``: an MlflowClient, or a SafeClient that records a failure."""
    if not inputs:
        return
    if isinstance(client, SafeClient):
        client.call(what, "log_inputs", run_id, datasets=list(inputs))
    else:
        client.log_inputs(run_id, datasets=list(inputs))


# ---- the search's own run --------------------------------------------------------------------------------

def git_commit() -> str | None:
    """The commit of tuner's own checkout (None for an installed package), wherever the command runs from."""
    import subprocess

    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def start_search_run(client: MlflowClient, uri: str, experiment: str, search: str, storage: str,
                     tags: dict[str, str], params: dict) -> tuple[str, str]:
    """(experiment id, parent run id): the search's run, created, or adopted when the search resumes."""
    experiment_id = ensure_experiment(client, uri, experiment)
    run = find_parent_run(client, experiment_id, search, storage)
    if run is None:
        all_tags = {"tuner.search": search, "tuner.storage": storage, **tags}
        commit = git_commit()
        if commit:
            all_tags["mlflow.source.git.commit"] = commit
        run = client.create_run(experiment_id, run_name=search, tags=all_tags)
        client.log_batch(run.info.run_id, params=flat_params(params))
    else:
        client.update_run(run.info.run_id, status="RUNNING")
    return experiment_id, run.info.run_id


def finish_search_run(tracking: Tracking, metrics: dict, tags: dict, artifacts: list[Path]) -> list[str]:
    """The search's outcome on its run: metrics, tags, files (leaderboard, plots); returns every MLflow
    write of the search that failed."""
    safe = tracking.trial_runs.mlflow   # one client for the whole search: one offline window, one record
    now = int(time.time() * 1000)
    safe.call("search metrics", "log_batch", tracking.parent_run_id,
              metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
              tags=[RunTag(k, str(v)) for k, v in tags.items()])
    for path in artifacts:
        safe.call(path.name, "log_artifact", tracking.parent_run_id, str(path))
    safe.call("end of the search run", "set_terminated", tracking.parent_run_id, status="FINISHED")
    return safe.missed


def close_lost_runs(tracking: Tracking, known_trial_ids: set[str]) -> None:
    """Runs of trials Ray never recorded (the driver died between starting them and its next snapshot)
    stay RUNNING forever otherwise."""
    safe = tracking.trial_runs.mlflow
    for trial_id, run_id in tracking.trial_runs.runs.items():
        if trial_id not in known_trial_ids:
            safe.call(f"lost trial {trial_id}", "set_tag", run_id, "tuner.end_reason",
                      "lost: the search was interrupted before Ray recorded this trial")
            safe.call(f"lost trial {trial_id}", "set_terminated", run_id, status="KILLED")


def close_interrupted_runs(trial_runs: TrialRuns, parent_run_id: str) -> None:
    """A search stopped before its end: the runs of its trials that were running, and its own run, are
    closed as KILLED (``--resume`` adopts and reopens them)."""
    safe = trial_runs.mlflow
    running = safe.call("running trial runs", "search_runs", [trial_runs.experiment_id],
                        filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}' and attributes.status = 'RUNNING'",
                        max_results=10000)
    for run in [] if running is FAILED else running:
        safe.call("stopped trial", "set_tag", run.info.run_id, "tuner.end_reason",
                  "stopped with the search: --resume continues it")
        safe.call("stopped trial", "set_terminated", run.info.run_id, status="KILLED")
    safe.call("stopped search", "set_terminated", parent_run_id, status="KILLED")


def log_test_score(tracking: Tracking, trial_id: str, test: dict, rank: int) -> None:
    """The test score beside the trial's own metrics."""
    safe = tracking.trial_runs.mlflow
    run_id = tracking.trial_runs.runs.get(trial_id)
    if run_id is None:
        safe.missed.append(f"test score of trial {trial_id}")
        return
    now = int(time.time() * 1000)
    safe.call(f"test score of trial {trial_id}", "log_batch", run_id,
              metrics=[Metric(k, float(test[k]), now, 0) for k in ("test_accuracy", "test_loss")],
              tags=[RunTag("tuner.rank", str(rank))])
