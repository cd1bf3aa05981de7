"""Train a toy2d model for tests/test_distributed.py, alone or under torchrun.

129 training points in batches of 64 give batches of 64, 64 and 1 per epoch: the last one
leaves rank 1 of 2 without a sample, the case train() must still get right.
Usage: python tests/ddp_train.py OUT.pt  (or torchrun ... tests/ddp_train.py OUT.pt)
"""

from __future__ import annotations

import sys

from rfbench.config import PRESETS, TrainConfig
from rfbench.data import load_split
from rfbench.distributed import World
from rfbench.train import ModelSpec, train


def main(out: str) -> None:
    world = World.from_env()
    data = load_split("toy2d")
    p = PRESETS["quick"]
    recipe = TrainConfig(epochs=2, batch_size=64, lr=1e-3, max_train_images=129)
    spec = ModelSpec("toy2d", (2,), p.unet, p.mlp, recipe, data.content_hash, "quick")
    train(spec, data, out_path=out, progress=False, world=world)
    world.close()


if __name__ == "__main__":
    main(sys.argv[1])
