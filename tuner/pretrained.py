"""A search's pretrained weights, resolved once in the driver before Ray starts.

``pretrained`` (a fixed setting or ``--set``) is one of: ``none``; ``imagenet`` (torchvision's weights of a
transfer backbone, from torch's cache, or downloaded with ``--download``); a file holding a state dict, or a
trial checkpoint folder (its best epoch's weights, ``best_model.pt``); an MLflow model URI such as ``models:/cifar_depth@champion``
(transfer from the champion of an earlier search, read from the search's own tracking store). The weights
travel to the trials through Ray's object store, so trials never touch MLflow, the disk or the network. A
source that is missing or unreadable is one line before any trial starts.

From a registered model the search also takes the architecture settings it was trained with, for every
setting the space neither fixes nor searches, so that its weights fit the network the trials build.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import torch
import yaml

from models import MODELS
from models.transfer import IMAGENET, torchvision_state_dict
from tuner.errors import UserError
from tuner.guards import redact
from tuner.spaces import Space, setting_types


@dataclass
class Pretrained:
    state: dict[str, torch.Tensor] | None = None   # CPU tensors, keyed like the model's state dict
    settings: dict = field(default_factory=dict)   # architecture settings taken from the source
    source: str = "none"
    pinned: str = "none"     # the source as found: a registry alias resolved to models:/NAME/VERSION


def resolve_pretrained(space: Space, overrides: dict, tracking_uri: str, download: bool,
                       pinned: str | None = None) -> Pretrained:
    """``pinned``: on --resume, the registered version the search started from (an alias may have moved to
    another model since: the rest of the trials start from the same weights as the first)."""
    if "pretrained" in space.search:
        raise UserError(f"{space.path}: search.pretrained: weights cannot be searched; fix them under fixed: "
                        f"or with --set pretrained=...")
    source = str(overrides.get("pretrained", space.fixed.get("pretrained", "none")))
    if source == "none":
        return Pretrained()
    if source == "imagenet":
        found = Pretrained(imagenet_weights(space.model, download), {}, source)
    elif source.startswith("models:/"):
        found = from_registry(pinned if pinned and pinned.startswith("models:/") else source, space, overrides,
                              tracking_uri)
    else:
        found = Pretrained(from_file(source), {}, source)
    arch = ", ".join(f"{k}={v}" for k, v in found.settings.items())
    print(f"pretrained: {len(found.state)} tensors from {source}" + (f"; its architecture: {arch}" if arch else ""))
    return found


def imagenet_weights(model: str, download: bool) -> dict:
    """torchvision's ImageNet weights of a backbone, from torch's cache (``$TORCH_HOME``) or, with
    ``download``, fetched there."""
    if model not in IMAGENET:
        raise UserError(f"pretrained: imagenet: torchvision has ImageNet weights for {', '.join(IMAGENET)}, not "
                        f"{model}; give a state-dict file or a models:/NAME@ALIAS URI")
    from torchvision.models import get_weight

    weights = get_weight(IMAGENET[model])
    cached = Path(torch.hub.get_dir(), "checkpoints", os.path.basename(urlparse(weights.url).path))
    if cached.is_file():
        return torchvision_state_dict(model, _read(cached))
    if not download:
        raise UserError(f"pretrained: imagenet: torchvision's weights for {model} are not in {cached.parent}; add "
                        f"--download to fetch them, or set pretrained to a file, a models:/ URI or none")
    try:
        # torch.hub's own default unpickles anything; the cached file is read with weights_only as well (_read)
        state = weights.get_state_dict(progress=True, check_hash=True, weights_only=True)
    except (OSError, RuntimeError) as exc:
        raise UserError(f"pretrained: imagenet: downloading {weights.url} failed ({exc}); put the file in "
                        f"{cached.parent} by hand") from None
    return torchvision_state_dict(model, state)


def _read(path: Path) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:   # pickle, zip and weights-only errors all mean "not a weights file"
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise UserError(f"pretrained: cannot read {path} as PyTorch weights ({first})") from None
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"pretrained: {path} holds no state dict (a mapping of names to tensors)")
    return state


def from_file(text: str) -> dict:
    """A state-dict file, or a trial checkpoint folder: its best epoch's weights (``best_model.pt``; a checkpoint
    written before trials kept them: its ``model.pt``)."""
    path = Path(text).expanduser()
    if path.is_dir():
        path = path / "best_model.pt" if (path / "best_model.pt").is_file() else path / "model.pt"
    if not path.is_file():
        raise UserError(f"pretrained: {text} is not a weights file or a checkpoint folder with best_model.pt; give one, "
                        f"a models:/NAME@ALIAS URI, imagenet or none")
    state = _read(path)
    if {"mean", "std"} <= set(state) and any(k.startswith("model.") for k in state):
        state = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}   # a saved Normalized
    return state


def from_registry(uri: str, space: Space, overrides: dict, tracking_uri: str) -> Pretrained:
    """A registered model's weights (the raw network inside its ``Normalized`` wrapper) and the architecture
    settings of the trial that trained it, both from the files logged with the model (``tuner.bundle``): no
    pickle, and the store named by ``tracking_uri`` alone."""
    from mlflow.tracking import MlflowClient

    from tuner.bundle import load_registered

    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    try:
        model, settings, version = load_registered(client, uri)
    except UserError as exc:
        raise UserError(f"pretrained: {exc}") from None
    except Exception as exc:
        first = redact(str(exc).strip().splitlines()[0][:200]) if str(exc).strip() else type(exc).__name__
        raise UserError(f"pretrained: {uri} cannot be loaded from {redact(tracking_uri)} ({first}); run the search "
                        f"that registers it first, or check the name and alias") from None
    state = {k: v.detach().cpu().clone() for k, v in model.model.state_dict().items()}
    return Pretrained(state, source_settings(settings["config"], space, overrides, uri), uri,
                      f"models:/{version.name}/{version.version}")


def source_settings(params: dict, space: Space, overrides: dict, uri: str) -> dict:
    """The source trial's settings of the space's model that the space leaves open (values, or text as
    MLflow params hold them)."""
    if params.get("model") and params["model"] != space.model:
        raise UserError(f"pretrained: {uri} is a {params['model']}, but {space.name} builds {space.model}; use "
                        f"weights of a {space.model}, or a space whose model is {params['model']}")
    types, given = setting_types(space.model), set(space.fixed) | set(space.search) | set(overrides)
    return {k: _typed(params[k], types[k]) if isinstance(params[k], str) else params[k]
            for k in MODELS[space.model].params if k in params and k not in given}


def _typed(text: str, types: tuple[type, ...]):
    """An MLflow param (text) as the setting's own type: '3' -> 3, 'True' -> True, '128' stays '128' for a
    setting that takes text."""
    value = yaml.safe_load(text)
    if isinstance(value, bool):
        return value if bool in types else text
    return value if isinstance(value, types) else text
