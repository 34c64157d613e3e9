"""After the search: rebuild a trial's model from its checkpoint and score it on the held-out test set."""

from __future__ import annotations

from pathlib import Path

import torch

from models import build_model
from models.layers import Normalized
from tuner.data import ImageSet, TrialData
from tuner.train import evaluate


def load_trial_model(config: dict, checkpoint_dir: str | Path, data: TrialData) -> Normalized:
    """The trial's network with the weights of its best epoch so far (a checkpoint's ``best_model.pt``),
    wrapped to take [0, 1] images (CPU, eval mode)."""
    model = build_model(config["model"], config, data.input_shape, data.num_classes)
    state = torch.load(Path(checkpoint_dir, "best_model.pt"), map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return Normalized(model, data.mean, data.std).eval()


def score(model: Normalized, images: ImageSet, batch_size: int | None = None) -> dict[str, float]:
    """Test loss and accuracy of a normalised model on uint8 images."""
    device = next(model.parameters()).device
    x = torch.from_numpy(images.images).to(device)
    y = torch.from_numpy(images.labels).to(device)
    loss, acc = evaluate(model.model, x, y, model.mean, model.std, batch_size)
    return {"test_loss": loss, "test_accuracy": acc}
