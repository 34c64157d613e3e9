"""A trial on digits: every metric and a checkpoint each epoch; a restart from a checkpoint continues."""

from __future__ import annotations

import math
import shutil

import pytest
import torch

from models import build_model
from tuner.costs import COST_METRICS, LARGE_BATCH, REPEATS, batch_of, model_costs
from tuner.data import prepare_trial_data
from tuner.batches import crop, flip
from tuner.train import CPU_EVAL_BATCH, TrainConfig, evaluate, lr_factor, param_groups
from tuner.trial import Reporting, run_trial

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
    assert {p.name for p in rec.checkpoints[0].iterdir()} == {"model.pt", "best_model.pt", "state.pt"}
    assert [e["epoch"] for e in result["epochs"]] == [1]


RESUMED = {**CONFIG, "max_epochs": 4, "dropout": 0.3, "lr_schedule": "cosine", "warmup_epochs": 1.5,
           "patience": 3, "early_stop_on": "val_accuracy"}   # dropout's RNG, a schedule and patience to carry


@pytest.mark.parametrize("ema", [0.0, 0.9])
def test_a_trial_restarted_from_its_checkpoint_continues_bit_for_bit(tmp_path, digits, ema):
    config = {**RESUMED, "ema": ema}
    straight = Recorder(tmp_path / "a")
    run_trial(config, digits, straight)
    resumed = Recorder(tmp_path / "b")
    run_trial(config, digits, resumed, start=straight.checkpoints[1])         # from the end of epoch 2
    assert [r["epoch"] for r in resumed.results] == [3, 4]
    # Same weights (and average), optimizer, schedule, patience and RNG state: the uninterrupted run, exactly.
    keys = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "best_epoch")
    assert [[r[k] for k in keys] for r in straight.results[2:]] == [[r[k] for k in keys] for r in resumed.results]
    for name in ("model.pt", "best_model.pt"):
        a, b = (torch.load(c / name, weights_only=True) for c in (straight.checkpoints[-1], resumed.checkpoints[-1]))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    a, b = (torch.load(c / "state.pt", weights_only=True) for c in (straight.checkpoints[-1], resumed.checkpoints[-1]))
    assert a["schedule"] == b["schedule"] and a["stopper"] == b["stopper"] and a["best"] == b["best"]


def test_a_trial_restarted_from_the_checkpoint_it_ended_with_trains_no_further(tmp_path, digits):
    """Ray may restart a trial from its last checkpoint if the search stops before it records the end."""
    ended = Recorder(tmp_path / "a")
    run_trial({**CONFIG, "lr": 0.0, "max_epochs": 10, "patience": 2}, digits, ended)
    assert ended.results[-1]["end_reason"] == "early-stopped by patience 2 at epoch 3"
    again = Recorder(tmp_path / "b")
    run_trial({**CONFIG, "lr": 0.0, "max_epochs": 10, "patience": 2}, digits, again, start=ended.checkpoints[-1])
    assert again.results == []


def test_a_trial_whose_loss_diverges_ends_with_the_worst_score_instead_of_failing(tmp_path, digits):
    rec = Recorder(tmp_path)
    run_trial({**CONFIG, "optimizer": "sgd", "lr": 1.0e6, "max_epochs": 3}, digits, rec)     # no exception
    (last,) = rec.results
    assert last["epoch"] == 1 and last["val_accuracy"] == 0.0 and not math.isfinite(last["train_loss"])
    assert last["end_reason"].startswith("diverged at epoch 1: training loss became")
    again = Recorder(tmp_path / "again")          # restarted from the checkpoint it ended with: nothing more
    run_trial({**CONFIG, "optimizer": "sgd", "lr": 1.0e6, "max_epochs": 3}, digits, again, start=rec.checkpoints[-1])
    assert again.results == []


def test_the_reported_learning_rate_is_the_one_the_epoch_trained_with(tmp_path, digits):
    rec = Recorder(tmp_path)
    run_trial({**CONFIG, "optimizer": "sgd", "lr": 0.1, "lr_schedule": "step", "lr_step_epochs": 1,
               "lr_gamma": 0.1}, digits, rec)
    assert [r["lr"] for r in rec.results] == pytest.approx([0.1, 0.01, 0.001])


def test_patience_stops_a_trial_that_stopped_improving(tmp_path, digits):
    rec = Recorder(tmp_path)
    # lr 0 never improves on epoch 1, so patience 2 stops it at epoch 3 of 10.
    run_trial({**CONFIG, "lr": 0.0, "max_epochs": 10, "patience": 2}, digits, rec)
    assert [r["epoch"] for r in rec.results] == [1, 2, 3]
    assert rec.results[-1]["end_reason"] == "early-stopped by patience 2 at epoch 3"
    last = Recorder(tmp_path / "last")          # patience that runs out on the last epoch stopped nothing
    run_trial({**CONFIG, "lr": 0.0, "max_epochs": 3, "patience": 2}, digits, last)
    assert last.results[-1]["epoch"] == 3 and last.results[-1]["end_reason"] == "completed"


def test_an_impossible_architecture_is_reported_not_raised(tmp_path, digits):
    rec = Recorder(tmp_path)
    run_trial({**CONFIG, "depth": 4}, digits, rec)
    (result,) = rec.results
    assert result["val_accuracy"] == 0.0 and result["epoch"] == 0 and not rec.checkpoints
    assert result["end_reason"].startswith("invalid architecture: block 4 maxpool")
    assert all(math.isnan(result[k]) for k in COST_METRICS)     # no network, no size: but every key is there


def test_nesterov_without_momentum_is_an_invalid_trial_not_a_failure(tmp_path, digits):
    rec = Recorder(tmp_path)
    run_trial({**CONFIG, "optimizer": "sgd", "nesterov": True, "momentum": 0.0}, digits, rec)   # torch would raise
    (result,) = rec.results
    assert result["epoch"] == 0 and "nesterov: true needs momentum > 0" in result["end_reason"]


def test_the_first_report_measures_what_the_network_costs_and_every_report_carries_it(tmp_path, digits):
    rec = Recorder(tmp_path)
    run_trial({**CONFIG, "max_epochs": 3}, digits, rec, reporting=Reporting(milestones=(2,), seconds=1e9))
    assert [r["epoch"] for r in rec.results] == [2, 3]       # ASHA's milestone, then the end
    first, last = rec.results
    network = build_model("convnet", CONFIG, digits.input_shape, digits.num_classes)
    assert first["params"] == last["params"] == sum(p.numel() for p in network.parameters())
    assert first["latency_ms"] > 0 and first["latency_batch_ms"] > 0
    assert (last["latency_ms"], last["latency_batch_ms"]) == (first["latency_ms"], first["latency_batch_ms"])
    # In the epochs' records (what MLflow logs) once: on the epoch of the first report.
    assert [sorted(set(COST_METRICS) & set(e)) for e in first["epochs"] + last["epochs"]] == [
        [], sorted(COST_METRICS), []]


def test_latency_is_the_median_of_timed_passes_over_the_batch_asked_for():
    calls = []

    class Counting(torch.nn.Module):
        def forward(self, x):
            calls.append(x.shape[0])
            return x.flatten(1)

    images = torch.zeros(3, 1, 4, 4, dtype=torch.uint8)
    zero = torch.zeros(1, 1, 1, 1)
    costs = model_costs(Counting(), images, zero, zero + 1)
    assert costs["params"] == 0 and costs["latency_ms"] > 0
    # one untimed pass then up to REPEATS timed ones, each batch size; the large batch repeats the 3 images
    assert calls == [1] * (1 + REPEATS) + [LARGE_BATCH] * (1 + REPEATS)
    assert batch_of(torch.arange(3), 7).tolist() == [0, 1, 2, 0, 1, 2, 0]


def test_latency_is_the_median_of_the_timed_passes_not_their_mean_or_the_first(monkeypatch):
    import statistics
    from types import SimpleNamespace

    from tuner import costs

    clock = [0.0]
    passes = iter([0.5, 0.001, 0.009, 0.002, 0.008, 0.003, 0.004, 0.006])    # seconds; the first is untimed

    class Timed(torch.nn.Module):
        def forward(self, x):
            clock[0] += next(passes)
            return x.flatten(1)

    monkeypatch.setattr(costs, "time", SimpleNamespace(perf_counter=lambda: clock[0]))   # a clock the passes move
    zero = torch.zeros(1, 1, 1, 1)
    ms = costs.latency_ms(Timed(), torch.zeros(1, 1, 4, 4, dtype=torch.uint8), zero, zero + 1)
    timed = [0.001, 0.009, 0.002, 0.008, 0.003, 0.004, 0.006][:REPEATS]
    assert ms == pytest.approx(1000 * statistics.median(timed)) and ms != pytest.approx(1000 * timed[0])


def test_crop_translates_each_image_by_its_own_shift_within_the_padding():
    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.uint8).view(2, 1, 6, 6)
    shifts = torch.tensor([[0, 4], [3, 1]])
    out = crop(x, 2, shifts)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    assert torch.equal(out[0], padded[0, :, 0:6, 4:10]) and torch.equal(out[1], padded[1, :, 3:9, 1:7])
    assert torch.equal(crop(x, 2, torch.full((2, 2), 2)), x)     # the centre is the image itself


def test_flip_mirrors_the_chosen_images_and_keeps_the_rest():
    x = torch.randint(0, 255, (3, 3, 4, 4), dtype=torch.uint8)
    out = flip(x, torch.tensor([True, False, True]))
    assert torch.equal(out[0], x[0].flip(2)) and torch.equal(out[1], x[1]) and torch.equal(out[2], x[2].flip(2))


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


def test_a_trial_reports_at_the_milestones_and_its_end_with_every_epoch_since_the_last(tmp_path, digits):
    rec = Recorder(tmp_path)
    run_trial({**CONFIG, "max_epochs": 5}, digits, rec, reporting=Reporting(milestones=(1, 3), seconds=3600))
    assert [r["epoch"] for r in rec.results] == [1, 3, 5]
    assert [[e["epoch"] for e in r["epochs"]] for r in rec.results] == [[1], [2, 3], [4, 5]]
    assert len(rec.checkpoints) == 3 and rec.results[-1]["end_reason"] == "completed"
    # the overhead of the trial's start and of each report travels on the next epoch's record
    assert "setup_seconds" in rec.results[0]["epochs"][0]
    assert {"checkpoint_seconds", "report_seconds"} <= set(rec.results[1]["epochs"][0])


def test_a_trial_reports_when_its_time_is_due_between_milestones(tmp_path, digits):
    rec = Recorder(tmp_path)
    run_trial({**CONFIG, "max_epochs": 3}, digits, rec, reporting=Reporting(milestones=(), seconds=0.0))
    assert [r["epoch"] for r in rec.results] == [1, 2, 3]


def test_the_checkpoint_keeps_the_best_epochs_weights(tmp_path, digits):
    rec = Recorder(tmp_path)
    run_trial({**CONFIG, "max_epochs": 4, "lr": 0.02}, digits, rec)   # reports (and checkpoints) every epoch
    scores = [r["val_accuracy"] for r in rec.results]
    best = scores.index(max(scores))                                    # the first epoch with the best score
    final = torch.load(rec.checkpoints[-1] / "best_model.pt", weights_only=True)
    then = torch.load(rec.checkpoints[best] / "model.pt", weights_only=True)
    assert final.keys() == then.keys() and all(torch.equal(final[k], then[k]) for k in final)
    assert torch.load(rec.checkpoints[-1] / "state.pt", weights_only=True)["best"]["epoch"] == best + 1


def test_an_epochs_batches_all_have_one_shape_and_cover_every_image():
    from tuner.batches import DeviceData, EpochBatches

    n, size = 10, 4
    x = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 2, 2).contiguous()
    data = DeviceData(x, torch.arange(n), x[:2], torch.arange(2), torch.zeros(1, 1, 1, 1), torch.ones(1, 1, 1, 1))
    batches = EpochBatches(n, size, "crop_flip", 1, torch.device("cpu"))
    batches.draw(torch.Generator().manual_seed(0))
    step, seen = torch.zeros(1, dtype=torch.long), []
    for i in range(batches.steps):
        images, labels = batches.batch(data, step + i)
        assert images.shape == (size, 1, 2, 2) and labels.shape == (size,)
        seen += labels.tolist()
    assert batches.steps == 3 and len(seen) == 12 and set(seen) == set(range(n))
    # the last batch is completed with the first images of the order
    assert seen[10:] == seen[:2]
    again = EpochBatches(n, size, "crop_flip", 1, torch.device("cpu"))
    again.draw(torch.Generator().manual_seed(0))
    assert torch.equal(again.order, batches.order) and torch.equal(again.shift, batches.shift)


def test_the_weight_average_matches_torchs_averaged_model():
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    from models import build_model
    from tuner.train import WeightAverage

    torch.manual_seed(0)
    net = build_model("convnet", {"depth": 2, "width": 4, "fc": "8", "batch_norm": True}, (1, 8, 8), 10)
    ours, theirs = WeightAverage(net, 0.9), AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    for _ in range(4):                      # train a little (batch norm's buffers move too), then average
        net.train()
        net(torch.randn(16, 1, 8, 8)).square().mean().backward()
        opt.step()
        opt.zero_grad()
        ours.update(net)
        theirs.update_parameters(net)
    a, b = ours.module.state_dict(), theirs.module.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert ours.steps == int(theirs.n_averaged) == 4


def test_evaluation_does_not_depend_on_the_eval_batch(digits):
    """The CPU's eval batch is small for speed: a batch-norm network in eval mode scores every image alike
    whatever its batch, the last, partial, batch included."""
    torch.manual_seed(0)
    model = build_model("convnet", {**CONFIG, "batch_norm": True}, digits.input_shape, digits.num_classes)
    model.train()
    with torch.no_grad():          # batch statistics move off their initial values, as after training
        model(torch.randn(64, *digits.input_shape) * 2 + 1)
    x = torch.from_numpy(digits.images[digits.val_idx])
    y = torch.from_numpy(digits.labels[digits.val_idx])
    mean, std = (torch.tensor(v, dtype=torch.float32).view(1, -1, 1, 1) for v in (digits.mean, digits.std))
    whole = evaluate(model, x, y, mean, std, batch_size=len(y))
    assert len(y) % CPU_EVAL_BATCH != 0
    small = evaluate(model, x, y, mean, std)
    assert small[1] == whole[1] and small[0] == pytest.approx(whole[0], rel=1e-5)
