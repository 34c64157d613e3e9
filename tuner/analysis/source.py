"""What the report is made from, as a finished search leaves it in MLflow: the search's run, its trials'
runs, the best trial's logged model and the test set of the dataset it was trained on.

Only MLflow and the data dir are read (no Ray results), so a search can be studied on another machine
that reaches the same tracking store.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch.nn as nn
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from tuner.analysis.settings import Options
from tuner.bundle import load_logged
from tuner.data import ImageSet, load_part
from tuner.errors import UserError

PARENT_TAG = "mlflow.parentRunId"
MODEL_NAME = "model"     # the name tuner.champion logs the best models under
MAX_TRIALS = 10000       # trial runs read per search at most


@dataclass
class Source:
    client: MlflowClient
    parent: Run                  # the search's run
    best: Run                    # the best trial's run
    trials: list[Run]            # every trial's run, the best included
    model: nn.Module             # the logged model: float32 images in [0, 1] (N, C, H, W) -> logits
    model_uri: str
    test: ImageSet

    @property
    def net(self) -> nn.Module:
        """The raw network inside the logged ``Normalized`` wrapper, whose layers the report studies."""
        return getattr(self.model, "model", self.model)

    @property
    def trial_id(self) -> str:
        return self.best.data.tags.get("tuner.trial_id", self.best.info.run_id[:8])

    @property
    def dataset(self) -> str:
        return self.best.data.params["dataset"]


def experiment_ids(client: MlflowClient, experiment: str | None) -> list[str]:
    if experiment is None:
        return [e.experiment_id for e in client.search_experiments()]
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise UserError(f"no MLflow experiment {experiment!r} in {client.tracking_uri}; check --experiment")
    return [exp.experiment_id]


def find_search(client: MlflowClient, name: str, experiment: str | None) -> Run:
    """The search's own run; the newest where a name was reused in one experiment."""
    if "'" in name:
        raise UserError(f"no search is named {name!r}: search names have no quotes")
    runs = client.search_runs(experiment_ids(client, experiment), filter_string=f"tags.`tuner.search` = '{name}'",
                              order_by=["attributes.start_time DESC"], max_results=100)
    runs = [r for r in runs if PARENT_TAG not in r.data.tags]
    where = f" in experiment {experiment!r}" if experiment else ""
    if not runs:
        raise UserError(f"no search named {name!r}{where} in {client.tracking_uri}; check --search, --experiment "
                        f"and --tracking-uri")
    if len({r.info.experiment_id for r in runs}) > 1:
        names = sorted({client.get_experiment(r.info.experiment_id).name for r in runs})
        raise UserError(f"a search named {name!r} is in several experiments ({', '.join(names)}); pick one with "
                        f"--experiment")
    return runs[0]


def trial_runs(client: MlflowClient, parent: Run) -> list[Run]:
    return client.search_runs([parent.info.experiment_id], max_results=MAX_TRIALS,
                              filter_string=f"tags.`{PARENT_TAG}` = '{parent.info.run_id}'")


def best_run(parent: Run, trials: list[Run]) -> Run:
    """The trial the search named best (its tag), else the one ranked 1 on the test set."""
    best_id = parent.data.tags.get("tuner.best_trial_id")
    for run in trials:
        if best_id and run.data.tags.get("tuner.trial_id") == best_id:
            return run
    for run in trials:
        if run.data.tags.get("tuner.rank") == "1":
            return run
    raise UserError(f"search {parent.data.tags['tuner.search']!r} has no best trial in MLflow: no trial finished "
                    f"an epoch, or the search has not ended")


def chosen_run(parent: Run, trials: list[Run], which: str) -> Run:
    """``best``: the best trial's run; ``pareto-K``: the run of the K-th model of a multi-objective search's
    Pareto front, as the search recorded it (its ``tuner.front`` tag)."""
    if which == "best":
        return best_run(parent, trials)
    name, front = parent.data.tags["tuner.search"], [t for t in parent.data.tags.get("tuner.front", "").split(",") if t]
    if not parent.data.params.get("objectives"):
        raise UserError(f"search {name!r} is single-objective: it has no Pareto front; drop --model {which} to "
                        f"study its best model")
    place = int(which.removeprefix("pareto-"))
    if not 1 <= place <= len(front):
        have = f"pareto-1 ... pareto-{len(front)}" if front else "none yet (has the search ended?)"
        raise UserError(f"search {name!r} has no model {which}: its Pareto front's models are {have}")
    for run in trials:
        if run.data.tags.get("tuner.trial_id") == front[place - 1]:
            return run
    raise UserError(f"search {name!r}: the run of trial {front[place - 1]} ({which}) is not in MLflow")


def logged_model(client: MlflowClient, run: Run, search: str):
    """The LoggedModel tuner.champion logged on the run."""
    models = client.search_logged_models([run.info.experiment_id],
                                         filter_string=f"source_run_id = '{run.info.run_id}'")
    found = [m for m in models if m.name == MODEL_NAME and m.status == "READY"]
    if not found:
        raise UserError(f"search {search!r} has no logged model on its best trial's run {run.info.run_id} "
                        f"(was MLflow unreachable when it ended, or --log-top-k 0?)")
    return found[0]


def load_source(opts: Options) -> Source:
    from tuner.store import check_tracking

    client = check_tracking(opts.tracking_uri)
    parent = find_search(client, opts.search, opts.experiment)
    trials = trial_runs(client, parent)
    best = chosen_run(parent, trials, opts.model)
    dataset = best.data.params.get("dataset")
    if dataset is None:
        raise UserError(f"the best trial's run {best.info.run_id} has no 'dataset' param: not a tuner search")
    test = load_part(dataset, opts.data_dir, "test", opts.download)   # before the model: the cheaper check
    logged = logged_model(client, best, opts.search)
    # Its weights and settings, rebuilt with the registry's builder: nothing from the store is unpickled.
    model, _ = load_logged(client, logged.model_id, f"the model of search {opts.search!r} ({logged.model_uri})")
    return Source(client, parent, best, trials, model, logged.model_uri, test)


def subset(images: ImageSet, n: int, seed: int) -> ImageSet:
    """At most n images, drawn at random (seeded) so that classes keep their shares."""
    if n >= len(images):
        return images
    from sklearn.model_selection import train_test_split

    try:
        keep, _ = train_test_split(np.arange(len(images)), train_size=n, random_state=seed, stratify=images.labels)
    except ValueError:   # fewer images than classes, or a class of one: a plain random draw
        keep = np.random.default_rng(seed).choice(len(images), n, replace=False)
    keep = np.sort(keep)
    return ImageSet(images.images[keep], images.labels[keep], images.classes)
