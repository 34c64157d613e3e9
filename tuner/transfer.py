"""Transfer learning inside a trial: pretrained weights in, a backbone frozen until a given step, the last k
layers trainable, the head at its own learning rate, weight decay on the layers a space names.

A model is ``features`` (the backbone) then ``classifier`` (the head), as every registered model is. The
weights themselves are resolved once, before Ray starts (``tuner.pretrained``), and reach trials as a state
dict through Ray's object store: nothing here reads a file, MLflow or the network.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from models import ArchitectureError
from tuner.train import TrainConfig, decayed_modules, param_groups

HEAD = "classifier"            # the head's module name in every registered model
LAYERS = (nn.Conv2d, nn.Linear)
NORMS = nn.modules.batchnorm._BatchNorm   # layers with running statistics, which training updates without a gradient


@dataclass
class TransferConfig:
    """The transfer settings a space may fix or search (for any model)."""

    pretrained: str = "none"              # none, imagenet, a state-dict file / checkpoint folder, models:/NAME@ALIAS
    refine_start_step: int | str = 0      # optimizer steps before the backbone trains; "never": it stays frozen
    trainable_layers: int | str = "all"   # the backbone's last k conv/linear layers (and their norms) train; "all"
    head_lr: float = 0.0                  # learning rate of the head; 0 = lr
    freeze_batch_norm: bool = False       # frozen layers' batch norms keep their running statistics (as Keras)

    @classmethod
    def from_config(cls, config: dict) -> "TransferConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        cfg = cls(**{k: v for k, v in config.items() if k in names})
        for key, word in (("refine_start_step", "never"), ("trainable_layers", "all")):
            if getattr(cfg, key) not in CountOr(word):
                raise ArchitectureError(f"{key} must be a whole number >= 0 or {word!r}, got {getattr(cfg, key)!r}")
        if cfg.head_lr < 0:
            raise ArchitectureError(f"head_lr must be >= 0 (0: the same as lr), got {cfg.head_lr}")
        return cfg


class CountOr:
    """The values of a count that also takes one word: ``0, 1, 2, ...`` or ``never``. Used by the space
    loader to check such settings like its other closed sets."""

    def __init__(self, word: str):
        self.word = word

    def __contains__(self, value) -> bool:
        return value == self.word or (isinstance(value, int) and not isinstance(value, bool) and value >= 0)

    def __iter__(self):
        return iter(("a whole number >= 0", self.word))


TRANSFER_KEYS = {f.name: str(f.type) for f in dataclasses.fields(TransferConfig)}   # key -> annotated type
SETTING_VALUES = {"refine_start_step": CountOr("never"), "trainable_layers": CountOr("all")}


# ---- which parameters are the head, the backbone, its last k layers ---------------------------------------

def head_of(model: nn.Module) -> nn.Module:
    head = getattr(model, HEAD, None)
    if not isinstance(head, nn.Module) or not hasattr(model, "features"):
        raise ArchitectureError(f"{type(model).__name__} has no features/{HEAD} parts for transfer settings")
    return head


def backbone_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The backbone's modules that hold parameters themselves, and its batch norms, in registration order."""
    return [(name, m) for name, m in model.named_modules()
            if name and not (name == HEAD or name.startswith(HEAD + "."))
            and (isinstance(m, NORMS) or any(True for _ in m.parameters(False)))]


def split_backbone(model: nn.Module, trainable_layers: int | str) -> tuple[list[nn.Module], list[nn.Module]]:
    """(fixed, trainable) backbone modules: the last k conv/linear layers, with everything registered after
    the first of them (their batch norms, a ResNet block's shortcut), train; the rest stays fixed."""
    layers = [m for _, m in backbone_layers(model)]
    starts = [i for i, m in enumerate(layers) if isinstance(m, LAYERS)]
    k = len(starts) if trainable_layers == "all" else min(int(trainable_layers), len(starts))
    cut = starts[len(starts) - k] if k > 0 else len(layers)
    return layers[:cut], layers[cut:]


def own_params(modules: list[nn.Module]) -> list[nn.Parameter]:
    return [p for m in modules for p in m.parameters(False)]


# ---- pretrained weights ------------------------------------------------------------------------------------

def load_pretrained(model: nn.Module, source: dict[str, torch.Tensor]) -> dict[str, list[str]]:
    """Copy every tensor of ``source`` whose name and shape fit; the head may differ (a new head). Raises
    ArchitectureError when a backbone tensor does not fit: the weights belong to another architecture."""
    own = model.state_dict()
    fits = {k: v for k, v in source.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    # a batch norm's step count is absent from weights saved before PyTorch 0.4.1 (ImageNet's ResNet files)
    misfits = [k for k in own if k not in fits and not k.startswith(HEAD + ".")
               and not k.endswith(".num_batches_tracked")]
    if misfits or not fits:
        first = misfits[0] if misfits else next(iter(own))
        theirs = tuple(source[first].shape) if first in source else "absent"
        raise ArchitectureError(f"the pretrained weights do not fit this architecture: {len(misfits)} backbone "
                                f"tensors differ (first: {first} is {tuple(own[first].shape)} here, {theirs} "
                                f"in the weights); use the source's architecture settings")
    model.load_state_dict(fits, strict=False)
    return {"loaded": sorted(fits), "new": sorted(k for k in own if k not in fits)}


# ---- a trial's transfer plan -------------------------------------------------------------------------------

@dataclass
class Plan:
    cfg: TransferConfig
    refined: list[nn.Parameter] = field(default_factory=list)   # backbone parameters frozen until the start step
    fixed_norms: list[nn.Module] = field(default_factory=list)    # batch norms held in eval mode: always
    refined_norms: list[nn.Module] = field(default_factory=list)  # while the refined backbone is frozen
    head: set[int] = field(default_factory=set)                 # ids of the head's parameters
    loaded: dict = field(default_factory=dict)
    _frozen: bool | None = None                                 # the refined backbone's state now

    @property
    def start(self) -> float:
        return float("inf") if self.cfg.refine_start_step == "never" else float(self.cfg.refine_start_step)

    def frozen_at(self, step: int) -> bool:
        return step < self.start

    @property
    def thaws(self) -> bool:
        """Whether the backbone is frozen for some steps and then trains."""
        return bool(self.refined) and self.start > 0

    def trainable_at(self, step: int) -> bool:
        """Freeze or thaw the refined backbone for the training step ``step`` (the schedule's step counter: it
        is in every checkpoint, so a resumed trial thaws at the same step); returns whether it is frozen,
        which the captured training step depends on."""
        frozen = self.frozen_at(step)
        if frozen != self._frozen:
            for p in self.refined:
                p.requires_grad_(not frozen)   # no gradient: the optimizer neither updates nor decays it
            for m in self.refined_norms:
                m.train(not frozen)
            self._frozen = frozen
        return frozen

    def train_mode(self, model: nn.Module) -> None:
        """``model.train()``; with ``freeze_batch_norm``, the batch norms of frozen layers normalise with their
        running statistics and leave them as they are (as Keras runs a frozen BatchNormalization). Without it
        their statistics follow the new data, which suits weights from another domain (ImageNet's statistics
        on 32x32 images standardised with their own mean and std)."""
        model.train()
        for m in self.fixed_norms + (self.refined_norms if self._frozen else []):
            m.eval()


def prepare(model: nn.Module, config: dict, pretrained: dict | None) -> Plan:
    """Load the pretrained weights and fix the layers that never train; returns the trial's plan."""
    cfg = TransferConfig.from_config(config)
    if pretrained is None and cfg.pretrained != "none":
        # The driver resolves the weights (tuner.pretrained); a trial without them would train from scratch.
        raise ArchitectureError(f"pretrained {cfg.pretrained!r} reached this trial without its weights")
    plan = Plan(cfg)
    transfer = pretrained is not None or cfg.refine_start_step != 0 or cfg.trainable_layers != "all" or cfg.head_lr > 0
    if not transfer:
        return plan
    plan.head = {id(p) for p in head_of(model).parameters()}
    if pretrained is not None:
        plan.loaded = load_pretrained(model, pretrained)
    fixed, refined = split_backbone(model, cfg.trainable_layers)
    for p in own_params(fixed):
        p.requires_grad_(False)
    plan.refined = own_params(refined)
    if cfg.freeze_batch_norm:
        plan.fixed_norms = [m for m in fixed if isinstance(m, NORMS)]
        plan.refined_norms = [m for m in refined if isinstance(m, NORMS)]
    return plan


def check_decay_names(model: nn.Module, which: str) -> None:
    """Every module-name prefix in ``weight_decay_on`` must name a conv or linear layer of the model: a typo
    would otherwise decay nothing, silently."""
    if which in ("all", "conv", "fc", "none"):
        return
    for prefix in (p.strip() for p in which.split(",") if p.strip()):
        if not decayed_modules(model, prefix):
            names = sorted(n for n, m in model.named_modules() if isinstance(m, LAYERS))
            shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
            raise ArchitectureError(f"weight_decay_on: {prefix!r} names no conv or linear layer; this model's: {shown}")


def optimizer_groups(model: nn.Module, cfg: TrainConfig, plan: Plan) -> list[dict]:
    """train.param_groups (decay on the chosen weights), with the head's parameters in groups of their own
    at ``head_lr`` when it is set. Parameters fixed by ``trainable_layers`` are in no group."""
    check_decay_names(model, cfg.weight_decay_on)
    groups = param_groups(model, cfg)
    if not plan.cfg.head_lr:
        return groups
    out = []
    for group in groups:
        body = [p for p in group["params"] if id(p) not in plan.head]
        head = [p for p in group["params"] if id(p) in plan.head]
        out += [{**group, "params": body}] if body else []
        out += [{**group, "params": head, "lr": plan.cfg.head_lr}] if head else []
    return out
