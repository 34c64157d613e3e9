"""A logged model as data, not code: its weights and the settings that rebuild its network.

Every model tuner logs carries two files in the logged model's ``extra_files/`` (bound to the model and
to each registered version of it): ``weights.pt``, the network's state dict, and ``tuner_model.json``, the
registered architecture's name, the trial's config, the input shape, the classes and the normalisation.
Loading reads the weights with ``torch.load(weights_only=True)``, rebuilds the network with the registry's
builder (``models.build_model``) and wraps it in ``Normalized``: nothing from the store is unpickled or
run. A settings file that names an architecture that is not registered, a value out of range, or weights
that do not fit the network are one line (``UserError``). MLflow's own flavour of the model is for serving
only (``tuner.champion``).
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from pathlib import Path

import torch
from mlflow.tracking import MlflowClient

from models import MODELS, build_model
from models.layers import Normalized
from tuner.errors import UserError

SETTINGS_FILE = "tuner_model.json"
WEIGHTS_FILE = "weights.pt"
FOLDER = "extra_files"             # where MLflow keeps a logged model's extra files
FORMAT = 1
MAX_SETTINGS_BYTES = 1 << 20
MAX_SIDE, MAX_CLASSES = 4096, 100_000
LOGGED_MODEL_URI = re.compile(r"^models:/(m-[0-9a-f]+)/?$")


# ---- writing -------------------------------------------------------------------------------------------

def _plain(value):
    """A config value as JSON takes it (numpy scalars from a searcher become Python numbers)."""
    return value.item() if hasattr(value, "item") and not isinstance(value, (str, bytes)) else value


def describe(model: Normalized, config: dict, input_shape, classes: list[str]) -> dict:
    """The settings file of a trial's model."""
    plain = {k: _plain(v) for k, v in config.items()}
    return {"format": FORMAT, "model": config["model"],
            "config": {k: v for k, v in plain.items() if v is None or isinstance(v, (str, int, float, bool))},
            "input_shape": [int(s) for s in input_shape], "num_classes": len(classes),
            "classes": [str(c) for c in classes],
            "mean": [float(m) for m in model.mean.flatten()], "std": [float(s) for s in model.std.flatten()]}


def write_bundle(model: Normalized, settings: dict, folder: Path) -> list[str]:
    """The two files, written to ``folder``; returns their paths (for ``log_model(extra_files=...)``)."""
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.model.state_dict().items()}
    torch.save(state, folder / WEIGHTS_FILE)
    (folder / SETTINGS_FILE).write_text(json.dumps(settings, indent=2, allow_nan=False))
    return [str(folder / SETTINGS_FILE), str(folder / WEIGHTS_FILE)]


# ---- reading -------------------------------------------------------------------------------------------

def _fail(where: str, msg: str):
    raise UserError(f"{where}: {msg}; it is not loaded")


def _read_settings(path: Path, where: str) -> dict:
    if not path.is_file():
        _fail(where, f"has no {SETTINGS_FILE} (an older tuner logged it as a pickle, which tuner does not load; "
                     f"rerun the search that made it)")
    if path.stat().st_size > MAX_SETTINGS_BYTES:
        _fail(where, f"its {SETTINGS_FILE} is larger than {MAX_SETTINGS_BYTES:,} bytes")
    try:
        settings = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        _fail(where, f"its {SETTINGS_FILE} is not JSON ({str(exc)[:120]})")
    if not isinstance(settings, dict) or settings.get("format") != FORMAT:
        _fail(where, f"its {SETTINGS_FILE} is not a format-{FORMAT} settings file")
    if not isinstance(settings.get("model"), str) or settings["model"] not in MODELS:   # a list is unhashable
        _fail(where, f"its settings name the model {str(settings.get('model'))[:80]!r}, which is not registered "
                     f"here ({', '.join(sorted(MODELS))})")
    _check_shape(settings, where)
    _check_config(settings, where)
    return settings


def _whole(value, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _check_shape(s: dict, where: str) -> None:
    shape = s.get("input_shape")
    if not (isinstance(shape, list) and len(shape) == 3 and all(_whole(v, 1, MAX_SIDE) for v in shape)):
        _fail(where, f"its input_shape {str(shape)[:80]} is not [channels, height, width]")
    n = s.get("num_classes")
    if not _whole(n, 1, MAX_CLASSES) or not (isinstance(s.get("classes"), list) and len(s["classes"]) == n):
        _fail(where, "its num_classes and classes do not agree")
    for key, low in (("mean", -math.inf), ("std", 0.0)):
        values = s.get(key)
        if not (isinstance(values, list) and len(values) == shape[0] and all(
                isinstance(v, (int, float)) and math.isfinite(v) and v > low for v in values)):
            _fail(where, f"its {key} is not {shape[0]} finite numbers" + (" above 0" if key == "std" else ""))


def _check_config(s: dict, where: str) -> None:
    """The trial's config: plain values, and every setting of the model checked as a space checks it."""
    from tuner.spaces import check_settings

    config = s.get("config")
    if not isinstance(config, dict) or config.get("model") != s["model"]:
        _fail(where, "its config is not the trial's settings of its model")
    for key, value in config.items():
        if not isinstance(value, (str, int, float, bool)) and value is not None:
            _fail(where, f"config.{key} is not a plain value")
    check_settings(where, s["model"], config, "config.")


def _read_weights(path: Path, where: str) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:   # missing, damaged, or holding more than tensors: not weights
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        _fail(where, f"its {WEIGHTS_FILE} cannot be read as weights ({first})")
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        _fail(where, f"its {WEIGHTS_FILE} is not a state dict (names to tensors)")
    return state


def _fit(net: torch.nn.Module, state: dict, model: str, where: str) -> None:
    ours = net.state_dict()
    wrong = sorted(set(ours) ^ set(state)) + [k for k in ours if k in state and ours[k].shape != state[k].shape]
    if wrong:
        _fail(where, f"its weights do not fit the {model} its settings describe (first: {wrong[0]})")
    net.load_state_dict(state)


def read_bundle(folder: Path, where: str) -> tuple[Normalized, dict]:
    """(the model on the CPU in eval mode, its settings) from a folder holding the two files."""
    from models import ArchitectureError

    settings = _read_settings(folder / SETTINGS_FILE, where)
    try:
        net = build_model(settings["model"], settings["config"], tuple(settings["input_shape"]),
                          settings["num_classes"])
    except (ArchitectureError, ValueError, TypeError, KeyError) as exc:
        _fail(where, f"its settings do not build a {settings['model']} ({str(exc)[:160]})")
    _fit(net, _read_weights(folder / WEIGHTS_FILE, where), settings["model"], where)
    return Normalized(net, settings["mean"], settings["std"]).eval(), settings


# ---- from MLflow ---------------------------------------------------------------------------------------

def load_logged(client: MlflowClient, model_id: str, where: str) -> tuple[Normalized, dict]:
    """A logged model's network and settings, downloaded from its own artifact location with the client's
    tracking URI (never the process-wide one)."""
    import mlflow.artifacts

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")   # one bar per file otherwise
    location = client.get_logged_model(model_id).artifact_location.rstrip("/")
    with tempfile.TemporaryDirectory(prefix="tuner-model-") as tmp:
        for name in (SETTINGS_FILE, WEIGHTS_FILE):
            try:
                mlflow.artifacts.download_artifacts(artifact_uri=f"{location}/{FOLDER}/{name}", dst_path=tmp,
                                                    tracking_uri=client.tracking_uri,
                                                    registry_uri=client.tracking_uri)
            except Exception:   # absent: read_bundle says what is missing
                pass
        return read_bundle(Path(tmp), where)


def model_id_of(version) -> str:
    """The logged model behind a registered version."""
    if getattr(version, "model_id", None):
        return version.model_id
    match = LOGGED_MODEL_URI.match(version.source or "")
    if not match:
        _fail(f"models:/{version.name}/{version.version}", "it is not a logged model of this MLflow (an older "
                                                          "tuner logged it as a pickle, which tuner does not load)")
    return match.group(1)


def registered_version(client: MlflowClient, uri: str):
    """``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` -> the model version."""
    rest = uri[len("models:/"):] if uri.startswith("models:/") else ""
    if "@" in rest:
        name, alias = rest.split("@", 1)
        return client.get_model_version_by_alias(name, alias)
    name, _, version = rest.partition("/")
    if not name or not version.isdigit():
        raise UserError(f"{uri} is not models:/NAME@ALIAS or models:/NAME/VERSION")
    return client.get_model_version(name, version)


def load_registered(client: MlflowClient, uri: str) -> tuple[Normalized, dict, object]:
    """(model, settings, version) of a registered model URI, from the client's store."""
    version = registered_version(client, uri)
    model, settings = load_logged(client, model_id_of(version), uri)
    return model, settings, version
