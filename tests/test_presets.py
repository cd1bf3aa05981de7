"""Presets: each is for its datasets, pins the recipe it cites, and its training options
(learning-rate warm-up, random flips) do what they say."""

from __future__ import annotations

import math

import pytest
import torch

from rfbench import candidates
from rfbench import train as train_module
from rfbench.cli import main
from rfbench.config import PRESETS, TrainConfig, check_preset
from rfbench.data import DataSplit, load_split
from rfbench.errors import UserError
from rfbench.models import build_model, count_parameters
from rfbench.train import ModelSpec, read_checkpoint, train


def test_every_preset_lists_its_h100_time_and_source(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    for name, p in PRESETS.items():
        assert f"{name}: " in out and p.source and p.h100_time
    assert out.count("one H100: ") == len(PRESETS)


@pytest.mark.parametrize(
    "preset,dataset,ok",
    [
        ("blog", "mnist", True),
        ("blog", "fashion-mnist", True),
        ("blog", "cifar10", False),
        ("blog-afhq", "image-folder", True),
        ("blog-afhq", "mnist", False),
        ("paper", "cifar10", True),
        ("paper", "fashion-mnist", False),
        ("quick", "cifar10", True),
        ("paper", "toy2d", True),
    ],
)
def test_presets_fit_their_datasets(preset, dataset, ok):
    if ok:
        assert check_preset(preset, dataset).name == preset
    else:
        with pytest.raises(UserError, match=f"preset {preset} is for .* not {dataset}"):
            check_preset(preset, dataset)


def test_a_preset_for_another_dataset_stops_run_and_train(capsys, tmp_path):
    for argv in (
        ["run", "--dataset", "mnist", "--preset", "paper", "--out", str(tmp_path / "r")],
        ["train", "--dataset", "mnist", "--preset", "blog-afhq", "--out", str(tmp_path / "t")],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "for mnist use quick or blog" in err
    assert not (tmp_path / "r").exists() and not (tmp_path / "t").exists()


def test_afhq_presets_default_to_128_px():
    afhq = PRESETS["blog-afhq"]
    assert candidates.preset_image_size(afhq, "image-folder", None) == 128
    assert candidates.preset_image_size(afhq, "image-folder", 64) == 64
    assert candidates.preset_image_size(PRESETS["quick"], "image-folder", None) is None
    assert PRESETS["blog-afhq"].train.epochs == 100 and PRESETS["blog-afhq-300"].train.epochs == 300
    assert PRESETS["blog-afhq-300"].unet == afhq.unet
    unet = build_model((3, 128, 128), afhq.unet, afhq.mlp)
    with torch.no_grad():
        assert unet(torch.zeros(1, 3, 128, 128), torch.zeros(1)).shape == (1, 3, 128, 128)


def test_blog_preset_is_the_blog_recipe():
    r = PRESETS["blog"].train
    assert (r.epochs, r.lr, r.grad_clip) == (10, 1e-4, 1.0)


def test_paper_preset_pins_the_cited_cifar10_config():
    """gnobitab/RectifiedFlow: cifar10_rf_gaussian_ddpmpp.py and default_cifar10_configs.py."""
    p = PRESETS["paper"]
    u, r = p.unet, p.train
    assert (u.base_channels, u.channel_mults, u.num_res_blocks) == (128, (1, 2, 2, 2), 4)
    assert (u.attention_resolutions, u.dropout) == ((16,), 0.15)
    assert (r.batch_size, r.lr, r.warmup_steps, r.grad_clip) == (128, 2e-4, 5000, 1.0)
    assert (r.ema_decay, r.weight_decay, r.random_flip) == (0.999999, 0.0, True)
    assert r.epochs == math.ceil(1_300_001 / math.ceil(50_000 / 128))  # steps / steps per epoch
    assert p.num_samples == 50_000
    params = count_parameters(build_model((3, 32, 32), p.unet, p.mlp))
    assert 50e6 < params < 70e6, params  # our UNet at DDPM++'s widths and depths


def test_learning_rate_warms_up_linearly(tmp_path):
    data = load_split("toy2d")
    p = PRESETS["quick"]
    recipe = TrainConfig(epochs=1, batch_size=512, lr=1e-3, warmup_steps=1000)
    spec = ModelSpec("toy2d", (2,), p.unet, p.mlp, recipe, data.content_hash, "quick")
    train(spec, data, out_path=tmp_path / "c.pt", progress=False)
    ckpt = read_checkpoint(tmp_path / "c.pt")
    steps = ckpt["step"]
    assert steps == math.ceil(len(data.x) / 512)
    assert ckpt["optimizer"]["param_groups"][0]["lr"] == pytest.approx(1e-3 * steps / 1000)


def test_random_flips_mirror_about_half_of_the_images(monkeypatch):
    """Each image is left-right asymmetric; the batches train_step sees hold each one as it
    is or mirrored, about half of each."""
    n = 256
    x = torch.linspace(-1, 1, 8).repeat(n, 1, 8, 1)  # a ramp from left to right
    x = x + torch.arange(n).float()[:, None, None, None] * 1e-3  # tell the images apart
    data = DataSplit("toy-images", "train", x, None, "h", "built by the test")
    seen = []
    real_step = train_module.train_step

    def spy(model, ema, opt, x0, x1, *args, **kwargs):
        seen.append(x1.clone())
        return real_step(model, ema, opt, x0, x1, *args, **kwargs)

    monkeypatch.setattr(train_module, "train_step", spy)
    p = PRESETS["quick"]
    for flip in (False, True):
        seen.clear()
        recipe = TrainConfig(epochs=1, batch_size=64, random_flip=flip)
        spec = ModelSpec("toy-images", (1, 8, 8), p.unet, p.mlp, recipe, "h", "quick")
        train(spec, data, progress=False)
        rows = torch.cat(seen)
        mirrored = (rows[:, 0, 0, 0] > rows[:, 0, 0, -1]).float().mean()
        assert len(rows) == n
        assert mirrored == 0 if not flip else 0.35 < mirrored < 0.65
