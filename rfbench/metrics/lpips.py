"""LPIPS (Zhang et al. 2018) as a distillation loss, through torch-fidelity's VGG16 port.

It needs two weight files that cannot be fetched offline: torch-fidelity's LPIPS heads and
torchvision's ImageNet VGG16. rfbench uses them only where they already are, in torch hub's
``checkpoints/`` directory (where both libraries' own downloads put them), and otherwise
stops with one message naming both; distillation then uses the L2 loss.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from rfbench.errors import UserError

LPIPS_FILES = {
    "weights-vgg16-lpips.pth": "https://github.com/toshas/torch-fidelity/releases/download/"
    "v0.2.0/weights-vgg16-lpips.pth",
    "vgg16-397923af.pth": "https://download.pytorch.org/models/vgg16-397923af.pth",
}
LPIPS_RESIZE = 224  # inputs are upsampled to VGG's training size, as LPIPS losses usually do


def lpips_weights_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def lpips_network() -> nn.Module:
    """torch-fidelity's LPIPS-VGG16, frozen; a UserError when its weights are not here."""
    where = lpips_weights_dir()
    missing = [name for name in LPIPS_FILES if not (where / name).is_file()]
    if missing:
        urls = "; ".join(f"{LPIPS_FILES[m]}" for m in missing)
        raise UserError(
            f"the LPIPS loss needs {', '.join(missing)} in {where}, and they cannot be "
            f"downloaded offline: fetch {urls} on a machine that is online and copy them there, "
            "or use --loss l2"
        )
    from torch_fidelity.sample_similarity_lpips import SampleSimilarityLPIPS

    return SampleSimilarityLPIPS("lpips-vgg16", sample_similarity_resize=LPIPS_RESIZE)


def lpips_loss(network: nn.Module, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean LPIPS between image batches in [-1, 1] (grey images repeated to RGB); it is
    differentiable in both: the network takes float values on the 0-255 scale."""
    if a.shape[1] == 1:
        a, b = a.expand(-1, 3, -1, -1), b.expand(-1, 3, -1, -1)
    return network((a + 1) * 127.5, (b + 1) * 127.5).mean()
