"""The report of a search and its best model (python -m tuner.analyze): every artifact of the quickstart
search's report is there and well formed, on disk, in the HTML, the model's part on the best trial's MLflow
run and the search's on the search's run; the stages on their own; one-line errors; and ``tuner.run
--analyze``. The search's part on its own: tests/test_search_report.py."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image

from models import build_model
from models.convnet import ConvNetConfig
from tests.conftest import CHROMIUM, screenshot, search_args
from tests.test_search_report import SEARCH_FILES, SEARCH_SECTIONS
from tuner.analysis.layers import forward, probe_layers, weighted_layers
from tuner.analysis.robustness import apply, transforms
from tuner.analyze import main

SIZES = ["--probe-samples", "360", "--tsne-points", "200", "--robustness-images", "120"]   # digits: 360 test images
TRANSFORMS = ["ColorJitter", "GaussianBlur", "RandomPerspective", "RandomRotation(45)", "RandomAffine translate",
              "RandomAffine scale"]
SECTIONS = [*SEARCH_SECTIONS, "overview", "curves", "classification", "examples", "weights", "probes", "tsne", "robustness"]
MODEL_FILES = {"learning_curves.png", "best_trial_history.csv", "classification.csv", "confusion_matrix.csv",
               "confusion_matrix.png", "correct_examples.png", "wrong_examples.png", "weights.csv",
               "weight_histograms.png", "first_layer_filters.png", "feature_map_input.png", "probes.csv",
               "probes_per_class.csv", "probes.png", "tsne.csv", "tsne.png", "robustness.csv",
               "robustness_examples.png"}
FIXED_FILES = MODEL_FILES | SEARCH_FILES | {"report.html", "summary.json"}


@pytest.fixture(scope="module")
def report(quickstart, tmp_path_factory):
    """The report of the session's quickstart search, at small sizes."""
    code, tmp, _ = quickstart
    assert code == 0
    out = tmp_path_factory.mktemp("report")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    rc = main(["--search", "qs", "--tracking-uri", uri, "--out", str(out), *SIZES])
    summary = json.loads((out / "summary.json").read_text()) if rc == 0 else {}
    client = MlflowClient(uri, registry_uri=uri)
    return SimpleNamespace(rc=rc, out=out, uri=uri, summary=summary, client=client,
                           run=client.get_run(summary["best_run_id"]) if summary else None)


def csv(report, name: str) -> pd.DataFrame:
    return pd.read_csv(report.out / name)


# ---- the report of a real search --------------------------------------------------------------------------

slow = pytest.mark.slow   # needs the session's quickstart search, or runs one


@slow
def test_the_report_writes_every_artifact(report):
    assert report.rc == 0
    files = {p.name for p in report.out.iterdir()}
    conv_maps = {f"feature_maps_conv{i}.png" for i in range(1, 1 + (csv(report, "weights.csv")["layer"]
                                                                    .str.startswith("conv").sum()))}
    assert FIXED_FILES | conv_maps == files
    assert set(report.summary["files"]) == files


@slow
def test_every_figure_opens_and_shows_something(report):
    for path in report.out.glob("*.png"):
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            low, high = image.convert("L").getextrema()
            assert image.width > 100 and image.height > 50 and high > low, path.name


@slow
def test_per_class_scores_and_confusion_matrix_match_the_logged_test_accuracy(report):
    table = csv(report, "classification.csv")
    assert list(table["class"].astype(str)) == [str(i) for i in range(10)]
    assert table[["precision", "recall", "f1"]].apply(lambda c: c.between(0, 1).all()).all()
    assert table["support"].sum() == 360
    matrix = pd.read_csv(report.out / "confusion_matrix.csv", index_col=0).to_numpy()
    assert matrix.shape == (10, 10) and matrix.sum() == 360
    # Computed afresh from the logged model; the search logged its own test score on the same run.
    assert np.trace(matrix) / 360 == pytest.approx(report.run.data.metrics["test_accuracy"], abs=1e-9)
    assert report.summary["test_accuracy"] == pytest.approx(report.run.data.metrics["test_accuracy"], abs=1e-9)


@slow
def test_a_row_per_layer_found_in_the_trained_architecture(report):
    params = report.run.data.params
    convs = int(params["depth"]) * int(params.get("convs_per_block", ConvNetConfig.convs_per_block))
    fcs = len(params["fc"].split("-")) + 1       # hidden widths and the output layer
    weights = csv(report, "weights.csv")
    assert list(weights["layer"]) == [f"conv{i}" for i in range(1, convs + 1)] + [f"fc{i}" for i in range(1, fcs + 1)]
    assert (weights["parameters"] > 0).all()


@slow
def test_probes_separate_the_classes_best_near_the_output(report):
    probes = csv(report, "probes.csv")
    assert list(probes["layer"]) == ["flatten"] + [f"fc{i}" for i in range(1, len(probes))]
    for column in ("accuracy", "precision", "recall", "fit accuracy"):
        assert probes[column].between(0, 1).all(), column
    assert probes["accuracy"].iloc[-1] > 0.6          # chance is 0.1 on ten classes
    per_class = csv(report, "probes_per_class.csv")
    assert len(per_class) == 10 * len(probes)
    assert per_class[["precision", "recall"]].apply(lambda c: c.between(0, 1).all()).all()


@slow
def test_tsne_places_every_point_and_every_class(report):
    points = csv(report, "tsne.csv")
    assert len(points) == 200 and np.isfinite(points[["x", "y"]].to_numpy()).all()
    assert sorted(points["label"].unique()) == list(range(10))
    assert report.summary["tsne_layer"] == "fc1"     # quickstart's one hidden FC layer


@slow
def test_robustness_has_a_row_per_transform_against_the_clean_accuracy(report):
    table = csv(report, "robustness.csv")
    assert list(table["transform"]) == ["clean", *TRANSFORMS]
    assert table["accuracy"].between(0, 1).all()
    clean = table["accuracy"].iloc[0]
    assert np.allclose(table["change"], table["accuracy"] - clean, atol=1e-6)


@slow
def test_the_html_holds_every_section_with_its_figures_inline(report):
    html = (report.out / "report.html").read_text()
    for section in SECTIONS:
        assert f'<section id="{section}">' in html, section
    sources = re.findall(r'<img src="([^"]+)"', html)
    assert len(sources) == len(list(report.out.glob("*.png")))
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    # the search's: overview, importance, rungs, FIFO, totals, slowest trials, failures, front;
    # the model's: facts, settings, epochs, per class, weights, probes, probes per class, robustness
    assert html.count("<table") == 16
    assert all(name in html for name in TRANSFORMS)


@slow
def test_the_report_is_on_the_best_trials_run(report):
    logged = {Path(a.path).name for a in report.client.list_artifacts(report.run.info.run_id, "analysis")}
    conv_maps = {p.name for p in report.out.glob("feature_maps_conv*.png")}
    assert logged == MODEL_FILES | conv_maps | {"report.html", "summary.json"}
    assert set(report.summary["model_files"]) == MODEL_FILES | conv_maps
    assert report.run.data.tags["tuner.analysis"] == "analysis/report.html"
    search = {Path(a.path).name for a in report.client.list_artifacts(report.summary["search_run_id"], "analysis")}
    assert search == SEARCH_FILES | {"report.html", "summary.json"}
    assert report.run.data.tags["tuner.rank"] == "1"


@slow
@pytest.mark.skipif(not CHROMIUM, reason="no chromium")
def test_the_html_renders_in_headless_chromium(report, tmp_path):
    with Image.open(screenshot(report.out / "report.html", tmp_path / "report.png", 2400)) as image:
        assert image.size == (1280, 2400)
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert len(colours) > 100          # text, tables and figures, not a blank or error page


@slow
def test_a_layer_that_is_not_in_the_model_is_one_line_naming_the_layers(report, tmp_path, capsys):
    assert main(["--search", "qs", "--tracking-uri", report.uri, "--out", str(tmp_path), "--tsne-layer", "fc9"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "fc9" in err[0] and "flatten" in err[0]


# ---- the stages on their own ------------------------------------------------------------------------------

def test_layers_are_found_in_order_and_read_after_their_norm_and_activation():
    net = build_model("convnet", {"depth": 2, "batch_norm": True, "fc": "32"}, (1, 28, 28), 10).eval()
    layers = weighted_layers(net)
    assert [layer.name for layer in layers] == ["conv1", "conv2", "fc1", "fc2"]
    assert [layer.after for layer in layers] == ["BatchNorm2d + ReLU", "BatchNorm2d + ReLU", "ReLU", ""]
    assert isinstance(layers[0].tap, torch.nn.ReLU) and layers[-1].tap is layers[-1].module
    probes = probe_layers(net)
    assert [p.name for p in probes] == ["flatten", "fc1", "fc2"] and probes[0].pre
    images = np.random.default_rng(0).integers(0, 256, (5, 1, 28, 28), dtype=np.uint8)
    logits, features = forward(net, images, probes)
    assert features["flatten"].shape == (5, net.classifier[1].in_features)
    assert features["fc1"].shape == (5, 32) and (features["fc1"] >= 0).all()      # after the ReLU
    np.testing.assert_allclose(features["fc2"], logits)


def test_every_transform_changes_images_keeps_their_shape_and_is_seeded():
    images = np.zeros((6, 1, 16, 16), dtype=np.uint8)
    images[:, :, 4:12, 6:10] = 200          # a bar, so geometry and contrast have something to move
    chosen = transforms(1)
    assert list(chosen) == TRANSFORMS
    assert chosen["ColorJitter"][0].saturation is None and chosen["ColorJitter"][0].hue is None   # grey images
    for name, (transform, _) in chosen.items():
        out = apply(transform, images, seed=3)
        assert out.shape == images.shape and out.dtype == np.uint8, name
        assert (out != images).any(), name
        np.testing.assert_array_equal(out, apply(transform, images, seed=3))
    assert transforms(3)["ColorJitter"][0].saturation is not None


# ---- one-line errors --------------------------------------------------------------------------------------

def fake_search(uri: str, dataset: str) -> None:
    """A finished search's runs as MLflow holds them, without a logged model."""
    client = MlflowClient(uri, registry_uri=uri)
    exp = client.create_experiment("s")
    parent = client.create_run(exp, tags={"tuner.search": "s1", "tuner.best_trial_id": "t1"})
    child = client.create_run(exp, tags={"mlflow.parentRunId": parent.info.run_id, "tuner.trial_id": "t1",
                                         "tuner.rank": "1"})
    client.log_param(child.info.run_id, "dataset", dataset)


@pytest.mark.parametrize("dataset, search, expected", [
    ("digits", "nope", "no search named 'nope'"),
    ("digits", "s1", "has no logged model"),
    ("mnist", "s1", "dataset mnist not found"),
])
def test_what_cannot_be_analysed_is_one_line_and_exit_2(tmp_path, capsys, dataset, search, expected):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    fake_search(uri, dataset)
    empty = tmp_path / "data"
    empty.mkdir()
    capsys.readouterr()           # MLflow's lines about creating the new store
    assert main(["--search", search, "--tracking-uri", uri, "--data-dir", str(empty), "--out",
                 str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and expected in err[0], err


# ---- after a search -----------------------------------------------------------------------------------------

@slow
def test_run_with_analyze_reports_the_search_it_just_finished(ray_session, tmp_path, monkeypatch):
    from tuner.run import main as run_main

    monkeypatch.chdir(tmp_path)       # the report goes to ./analysis/NAME
    assert run_main(search_args(tmp_path, "--space", "quickstart", "--smoke", "--name", "qa", "--analyze")) == 0
    summary = json.loads((tmp_path / "analysis" / "qa" / "summary.json").read_text())
    assert (tmp_path / "analysis" / "qa" / "report.html").stat().st_size > 10_000
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}", registry_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    logged = {Path(a.path).name for a in client.list_artifacts(summary["best_run_id"], "analysis")}
    assert "report.html" in logged and set(summary["model_files"]) | {"report.html", "summary.json"} == logged
