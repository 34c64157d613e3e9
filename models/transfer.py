"""torchvision backbones with a new head, for transfer learning: ResNet-18 (report 004), VGG-16 (report 000)
and AlexNet (report 001).

Every network here (and every report network) is ``features`` (the backbone) then ``classifier`` (the head),
which is what ``pretrained``, ``refine_start_step``, ``trainable_layers`` and ``head_lr`` act on. The head is
new: flatten -> [dropout -> FC -> ReLU] per ``fc`` width -> dropout -> FC to the classes.

Backbones: ResNet-18's layers up to its global average pool (512 features at any input size); VGG-16's and
AlexNet's ``features`` (conv layers and pools), flattened (VGG-16 on 32x32 gives pool5's 1x1x512, the
features report 000 used; on 224x224, 7x7x512). Small inputs: ``input_size`` resizes images (bilinear) in
``forward``; AlexNet's pools reduce anything below 63x63 to nothing, so it resizes to 64 by default. One-channel
images are repeated to the three channels the backbones take.

Layer names (for ``weight_decay_on``): torchvision's under ``features.`` (``features.conv1``,
``features.layer4.1.conv2`` for ResNet-18; ``features.0`` .. ``features.28`` for VGG-16's convs, ``features.0``
.. ``features.10`` for AlexNet's), and ``classifier.fc1``.., ``classifier.out`` for the head; ``fc`` = the head.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.layers import named, parse_widths
from models.registry import ArchitectureError, config_from, register_model
from models.report000 import fc_head

# torchvision's ImageNet weights of each backbone (``torchvision.models.get_weight`` names).
IMAGENET = {"resnet18": "ResNet18_Weights.IMAGENET1K_V1", "vgg16": "VGG16_Weights.IMAGENET1K_V1",
            "alexnet": "AlexNet_Weights.IMAGENET1K_V1"}


@dataclass
class TransferNetConfig:
    fc: str = ""                  # hidden widths of the new head, "384-192"; "" = one layer to the classes
    dropout: float = 0.0          # before each layer of the head
    input_size: int = 0           # pixels: images are resized to input_size x input_size; 0 = as they come


@dataclass
class AlexNetConfig(TransferNetConfig):
    input_size: int = 64          # AlexNet's pools need at least 63x63


def _resnet18() -> nn.Sequential:
    from torchvision.models import resnet18

    net = resnet18(weights=None)
    return named(*[(name, m) for name, m in net.named_children() if name != "fc"])


def _vgg16() -> nn.Sequential:
    # torchvision's own layer list and init; building the whole VGG would also allocate (and then drop) the
    # 120M-parameter ImageNet classifier.
    from torchvision.models.vgg import cfgs, make_layers

    features = make_layers(cfgs["D"])
    for m in features.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
    return features


def _alexnet() -> nn.Sequential:
    # torchvision's AlexNet.features, layer for layer (same indices, so its weights load); built here so that
    # the 58M-parameter classifier is never allocated.
    return nn.Sequential(
        nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
        nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(384, 256, 3, padding=1),
        nn.ReLU(inplace=True), nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2))


BACKBONES = {"resnet18": _resnet18, "vgg16": _vgg16, "alexnet": _alexnet}


def torchvision_state_dict(name: str, state: dict) -> dict:
    """torchvision's state dict of ``name`` -> the keys of this module's backbone (the old head dropped)."""
    if name == "resnet18":
        return {f"features.{k}": v for k, v in state.items() if not k.startswith("fc.")}
    return {k: v for k, v in state.items() if k.startswith("features.")}


class TransferNet(nn.Module):
    def __init__(self, name: str, cfg: TransferNetConfig, input_shape, num_classes: int):
        super().__init__()
        channels, height, width = input_shape
        if channels not in (1, 3):
            raise ArchitectureError(f"{name} takes 1- or 3-channel images, not {channels}")
        if cfg.input_size < 0:
            raise ArchitectureError(f"input_size must be 0 (as they come) or pixels, got {cfg.input_size}")
        self.input_size = cfg.input_size
        self.features = BACKBONES[name]()
        size = (cfg.input_size or height, cfg.input_size or width)
        self.classifier = fc_head(self._features_out(name, size), parse_widths(cfg.fc), num_classes, cfg.dropout)

    @torch.no_grad()
    def _features_out(self, name: str, size: tuple[int, int]) -> int:
        """Width of the flattened backbone output, from one dry run (eval mode: batch norm takes one image)."""
        self.features.eval()
        try:
            out = self.features(torch.zeros(1, 3, *size))
        except RuntimeError as exc:
            raise ArchitectureError(f"{name}: the {size[0]}x{size[1]} input shrinks below 1x1 "
                                    f"({str(exc).splitlines()[0][:120]}); set a larger input_size") from None
        finally:
            self.features.train()
        return out[0].numel()

    def forward(self, x):
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if self.input_size and tuple(x.shape[-2:]) != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        return self.classifier(self.features(x))


@register_model("resnet18", TransferNetConfig)
def resnet18(config: dict, input_shape, num_classes: int) -> nn.Module:
    """torchvision's ResNet-18 up to its average pool, with a new head (report 004 trained its last five layers)."""
    return TransferNet("resnet18", config_from(TransferNetConfig, config), input_shape, num_classes)


@register_model("vgg16", TransferNetConfig)
def vgg16(config: dict, input_shape, num_classes: int) -> nn.Module:
    """torchvision's VGG-16 conv layers with new FC layers (report 000: FC 384-192 on pool5, refined from step N)."""
    return TransferNet("vgg16", config_from(TransferNetConfig, config), input_shape, num_classes)


@register_model("alexnet", AlexNetConfig)
def alexnet(config: dict, input_shape, num_classes: int) -> nn.Module:
    """torchvision's AlexNet conv layers with a new head (report 001: frozen features, FC 4096-4096)."""
    return TransferNet("alexnet", config_from(AlexNetConfig, config), input_shape, num_classes)
