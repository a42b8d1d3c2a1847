import dataclasses

import pytest
import torch

import gclib
from gclib.configs import ModelConfig

torch.set_num_threads(min(2, torch.get_num_threads()))


def tiny_config(**over) -> ModelConfig:
    """1x4x4 images, 3 classes: two Haar downsamplings give a 16x1x1 latent; Jacobians are 16x16."""
    base = ModelConfig(name="tiny", in_channels=1, image_size=4, num_classes=3, entry_downsamples=1,
                       stage_blocks=(2, 2), stage_strides=(1, 2), stage_widths=(4, 4), n_fc_dims=4, low_rank=2)
    return dataclasses.replace(base, **over)


def randomize(model: torch.nn.Module, scale: float = 0.1, seed: int = 0) -> torch.nn.Module:
    """Move every trainable parameter off its initial value (zero-init layers make blocks identities)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


@pytest.fixture(scope="session")
def fashion():
    return gclib.data.load("fashion-mnist")
