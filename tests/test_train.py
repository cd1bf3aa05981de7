from __future__ import annotations

import pickle

import pytest
import torch

from rfbench.config import PRESETS, MLPConfig, TrainConfig, UNetConfig
from rfbench.data import load_split
from rfbench.errors import UserError
from rfbench.flow import interpolate, rf_loss, target_velocity
from rfbench.models import UNet, count_parameters
from rfbench.train import ModelSpec, ema_decay_at, load_model, read_checkpoint, train


def _spec(data, epochs=2, **kw):
    train = TrainConfig(**{"epochs": epochs, "batch_size": 1000, "lr": 1e-3, **kw})
    return ModelSpec(
        "toy2d",
        data.sample_shape,
        UNetConfig(),
        MLPConfig(hidden=32, depth=2),
        train,
        data.content_hash,
        "test",
    )


def test_path_convention():
    x0, x1 = torch.zeros(2, 3), torch.ones(2, 3)
    t = torch.tensor([0.0, 1.0])
    xt = interpolate(x0, x1, t)
    assert torch.equal(xt[0], x0[0]) and torch.equal(xt[1], x1[1])  # t=0 noise, t=1 data
    assert torch.equal(target_velocity(x0, x1), x1 - x0)


def test_rf_loss_is_zero_for_the_true_straight_field():
    x0, x1 = torch.randn(8, 2), torch.randn(8, 2)
    oracle = lambda xt, t: x1 - x0  # noqa: E731
    assert rf_loss(oracle, x0, x1, torch.rand(8)).item() == 0.0


def test_unet_shapes_and_small_size():
    net = UNet(1, 28, UNetConfig())
    out = net(torch.randn(3, 1, 28, 28), torch.rand(3))
    assert out.shape == (3, 1, 28, 28)
    assert count_parameters(net) < 400_000
    rgb = UNet(3, 32, UNetConfig(attention_resolutions=(8,)))
    assert rgb(torch.randn(2, 3, 32, 32), torch.rand(2)).shape == (2, 3, 32, 32)


def test_training_lowers_the_loss(tmp_path):
    data = load_split("toy2d")
    trained = train(
        _spec(data, epochs=4, batch_size=128), data, out_path=tmp_path / "c.pt", progress=False
    )
    assert trained.epochs_done == 4
    # The loss starts near E|x1 - x0|^2 / 2 = 3; its floor on this ring is about 1.8.
    assert all(b < a for a, b in zip(trained.losses, trained.losses[1:]))
    assert trained.losses[-1] < 0.9 * trained.losses[0]


def test_resume_matches_uninterrupted(tmp_path):
    data = load_split("toy2d")
    full = train(_spec(data, epochs=2), data, out_path=tmp_path / "full.pt", progress=False)
    train(_spec(data, epochs=1), data, out_path=tmp_path / "part.pt", progress=False)
    # Pretend the 1-epoch run was a 2-epoch run killed after epoch 1.
    ckpt = read_checkpoint(tmp_path / "part.pt")
    ckpt["spec"] = _spec(data, epochs=2).to_dict()
    torch.save(ckpt, tmp_path / "part.pt")
    resumed = train(
        _spec(data, epochs=2), data, out_path=tmp_path / "part.pt", resume=True, progress=False
    )
    assert resumed.losses == full.losses
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)


def test_resume_with_other_config_is_refused(tmp_path):
    data = load_split("toy2d")
    train(_spec(data, epochs=1), data, out_path=tmp_path / "c.pt", progress=False)
    with pytest.raises(UserError, match="another config"):
        train(
            _spec(data, epochs=1, lr=1e-2),
            data,
            out_path=tmp_path / "c.pt",
            resume=True,
            progress=False,
        )


def test_checkpoint_round_trip(tmp_path):
    data = load_split("toy2d")
    trained = train(_spec(data, epochs=1), data, out_path=tmp_path / "c.pt", progress=False)
    loaded = load_model(tmp_path / "c.pt")
    assert loaded.model_id == trained.model_id
    assert loaded.spec == trained.spec
    x, t = torch.randn(5, 2), torch.rand(5)
    torch.testing.assert_close(loaded.model(x, t), trained.model(x, t))


@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_malicious_pickle_is_refused(tmp_path, writer):
    marker = tmp_path / "payload-ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))  # creates the marker file if it ever runs

    path = tmp_path / "evil.pt"
    obj = {"format": "rfbench-checkpoint-v1", "x": Payload()}
    if writer == "pickle":
        path.write_bytes(pickle.dumps(obj))
    else:
        torch.save(obj, path)
    with pytest.raises(UserError, match="safely"):
        read_checkpoint(path)
    assert not marker.exists()


def test_ema_warmup():
    assert ema_decay_at(0, 0.999) == pytest.approx(0.1)
    assert ema_decay_at(10**6, 0.999) == 0.999


def test_edited_weights_fail_the_recorded_checksum(tmp_path):
    data = load_split("toy2d")
    train(_spec(data, epochs=1), data, out_path=tmp_path / "c.pt", progress=False)
    ckpt = read_checkpoint(tmp_path / "c.pt")
    name = next(iter(ckpt["ema"]))
    ckpt["ema"][name] = ckpt["ema"][name] + 1e-3
    torch.save(ckpt, tmp_path / "edited.pt")
    with pytest.raises(UserError, match="do not match the sha256"):
        load_model(tmp_path / "edited.pt")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "c.pt").read_bytes()[:500])
    with pytest.raises(UserError, match="cannot load checkpoint"):
        load_model(tmp_path / "cut.pt")


def test_checkpoint_from_another_version_is_one_clear_error(tmp_path):
    from rfbench.train import write_checkpoint

    data = load_split("toy2d")
    p = PRESETS["quick"]
    spec = ModelSpec(
        "toy2d",
        (2,),
        p.unet,
        p.mlp,
        TrainConfig(epochs=1, batch_size=4096),
        data.content_hash,
        "quick",
    )
    path = tmp_path / "c.pt"
    train(spec, data, out_path=path, progress=False)
    ckpt = read_checkpoint(path)
    ckpt["spec"]["train"]["a_field_from_the_future"] = 1
    write_checkpoint(path, ckpt)
    with pytest.raises(UserError, match=r"checkpoint .*c\.pt: .*another version"):
        load_model(path)


def test_dataloader_workers_give_the_same_model():
    """Batches through 2 worker processes are the batches of the main process, in order."""
    data = load_split("toy2d")
    p = PRESETS["quick"]
    spec = ModelSpec(
        "toy2d",
        (2,),
        p.unet,
        p.mlp,
        TrainConfig(epochs=1, batch_size=2048),
        data.content_hash,
        "quick",
    )
    alone = train(spec, data, progress=False)
    workers = train(spec, data, progress=False, workers=2)
    assert workers.model_id == alone.model_id and workers.losses == alone.losses
