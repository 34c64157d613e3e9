"""A trial on digits: every metric and a checkpoint each epoch; a restart from a checkpoint continues."""

from __future__ import annotations

import shutil

import pytest
import torch

from tuner.data import prepare_trial_data
from tuner.train import TrainConfig, lr_factor, param_groups, random_crop, random_flip
from tuner.trial import run_trial

CONFIG = {"model": "convnet", "dataset": "digits", "depth": 2, "width": 8, "fc": "32", "lr": 0.003,
          "batch_size": 64, "max_epochs": 3, "augment": "crop_flip", "crop_padding": 1, "seed": 0}
METRICS = {"epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "epoch_seconds"}


@pytest.fixture(scope="module")
def digits():
    return prepare_trial_data("digits", None, 0.2, 0)


class Recorder:
    """Collects what a trial reports and keeps a copy of each checkpoint it hands over."""

    def __init__(self, folder):
        self.folder, self.results, self.checkpoints = folder, [], []

    def __call__(self, metrics, checkpoint_dir):
        self.results.append(metrics)
        if checkpoint_dir is not None:
            keep = self.folder / f"ckpt{len(self.results)}"
            shutil.copytree(checkpoint_dir, keep)
            self.checkpoints.append(keep)


def test_each_epoch_reports_every_metric_and_a_checkpoint(tmp_path, digits):
    rec = Recorder(tmp_path)
    run_trial({**CONFIG, "max_epochs": 1}, digits, rec)
    (result,) = rec.results
    assert METRICS <= set(result) and result["epoch"] == 1 and result["end_reason"] == "completed"
    assert 0 <= result["val_accuracy"] <= 1 and result["train_loss"] > 0
    assert {p.name for p in rec.checkpoints[0].iterdir()} == {"model.pt", "state.pt"}


def straight_and_resumed(tmp_path, digits, config):
    """The same trial run to the end, and run for one epoch then restarted from that checkpoint."""
    straight = Recorder(tmp_path / "a")
    run_trial(config, digits, straight)
    first = Recorder(tmp_path / "b")
    run_trial({**config, "max_epochs": 1}, digits, first)
    resumed = Recorder(tmp_path / "c")
    run_trial(config, digits, resumed, start=first.checkpoints[0])
    return straight, resumed


@pytest.mark.parametrize("ema", [0.0, 0.9])
def test_a_trial_restarted_from_its_checkpoint_continues_where_it_was(tmp_path, digits, ema):
    straight, resumed = straight_and_resumed(tmp_path, digits, {**CONFIG, "ema": ema})
    assert [r["epoch"] for r in resumed.results] == [2, 3]
    # Same weights (and average), optimizer, schedule and RNG state: the continued run is the uninterrupted one.
    for a, b in zip(straight.results[1:], resumed.results):
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5)
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)


def test_patience_stops_a_trial_that_stopped_improving(tmp_path, digits):
    rec = Recorder(tmp_path)
    # lr 0 never improves on epoch 1, so patience 2 stops it at epoch 3 of 10.
    run_trial({**CONFIG, "lr": 0.0, "max_epochs": 10, "patience": 2}, digits, rec)
    assert [r["epoch"] for r in rec.results] == [1, 2, 3]
    assert rec.results[-1]["end_reason"] == "early-stopped by patience 2 at epoch 3"


def test_an_impossible_architecture_is_reported_not_raised(tmp_path, digits):
    rec = Recorder(tmp_path)
    run_trial({**CONFIG, "depth": 4}, digits, rec)
    (result,) = rec.results
    assert result["val_accuracy"] == 0.0 and result["epoch"] == 0 and not rec.checkpoints
    assert result["end_reason"].startswith("invalid architecture: block 4 maxpool")


def test_random_crop_translates_each_image_within_the_padding():
    gen = torch.Generator().manual_seed(0)
    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.uint8).view(2, 1, 6, 6)
    out = random_crop(x, 2, gen)
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(2):
        assert any(torch.equal(out[i], padded[i, :, dy:dy + 6, dx:dx + 6]) for dy in range(5) for dx in range(5))
    assert torch.equal(random_crop(x, 0, gen), x)


def test_random_flip_mirrors_some_images_and_keeps_the_rest():
    x = torch.randint(0, 255, (64, 3, 4, 4), dtype=torch.uint8)
    out = random_flip(x, torch.Generator().manual_seed(0))
    flipped = [torch.equal(o, i.flip(2)) for o, i in zip(out, x)]
    kept = [torch.equal(o, i) for o, i in zip(out, x)]
    assert all(f or k for f, k in zip(flipped, kept)) and 10 < sum(flipped) < 54


def test_weight_decay_reaches_only_the_chosen_layers():
    from models import build_model

    net = build_model("convnet", {"depth": 2, "fc": "16", "batch_norm": True}, (1, 8, 8), 10)
    for which, kinds in (("all", {torch.nn.Conv2d, torch.nn.Linear}), ("fc", {torch.nn.Linear}),
                         ("conv", {torch.nn.Conv2d})):
        groups = param_groups(net, TrainConfig(weight_decay=0.01, weight_decay_on=which))
        decayed = {id(p) for g in groups if g["weight_decay"] for p in g["params"]}
        expected = {id(m.weight) for m in net.modules() if type(m) in kinds}
        assert decayed == expected
    assert len(param_groups(net, TrainConfig(weight_decay=0.0))) == 1


def test_learning_rate_schedules():
    cosine = TrainConfig(lr_schedule="cosine", warmup_epochs=1, max_epochs=10)
    assert lr_factor(0, cosine, 100) == 0 and lr_factor(100, cosine, 100) == pytest.approx(1)
    assert lr_factor(1000, cosine, 100) == pytest.approx(0, abs=1e-9)
    step = TrainConfig(lr_schedule="step", lr_step_epochs=3, lr_gamma=0.1)
    assert [round(lr_factor(e * 10, step, 10), 6) for e in (0, 2, 3, 6)] == [1, 1, 0.1, 0.01]


def test_an_averaged_model_is_what_is_evaluated_and_saved(tmp_path, digits):
    import torch as t

    averaged = Recorder(tmp_path / "a")
    run_trial({**CONFIG, "ema": 0.9}, digits, averaged)
    saved = t.load(averaged.checkpoints[-1] / "model.pt", weights_only=True)
    raw = t.load(averaged.checkpoints[-1] / "state.pt", weights_only=True)["train_model"]
    assert set(saved) == set(raw) and any(not t.equal(saved[k], raw[k]) for k in saved)
    plain = Recorder(tmp_path / "b")
    run_trial(CONFIG, digits, plain)
    assert plain.results[-1]["val_loss"] != pytest.approx(averaged.results[-1]["val_loss"], rel=1e-6)
