"""The speed options on a CPU (bf16, channels_last, torch.compile, --batch-size auto) and
external models through `rfbench run`: each option either takes effect and is recorded,
or is dropped with one warning and the rows say so; the numbers never change silently."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from rfbench import runtime
from rfbench.cli import main
from rfbench.config import PRESETS, UNetConfig
from rfbench.models import UNet
from rfbench.runtime import Accelerated, Acceleration, accelerate, fit_batch_size

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def toy_checkpoint(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("toy-model")
    assert main(["train", "--dataset", "toy2d", "--epochs", "1", "--out", str(out)]) == 0
    return str(out / "checkpoint.pt")


def toy_run(tmp_path, name: str, checkpoint: str, *extra: str) -> pd.DataFrame:
    argv = [
        "run",
        "--dataset",
        "toy2d",
        "--solvers",
        "euler,dopri5",
        "--steps",
        "4",
        "--tols",
        "1e-3",
        "--num-samples",
        "200",
        "--batch-size",
        "64",
        "--checkpoint",
        checkpoint,
        "--out",
        str(tmp_path / name),
        *extra,
    ]
    assert main(argv) == 0
    return pd.read_csv(tmp_path / name / "results.csv")


def test_plain_run_records_its_options(tmp_path, toy_checkpoint):
    rows = toy_run(tmp_path, "plain", toy_checkpoint)
    assert list(rows["compute_dtype"]) == ["fp32", "fp32"]
    assert not rows["channels_last"].any() and not rows["compiled"].any()


def test_bf16_on_a_cpu_runs_fp32_and_says_so(tmp_path, toy_checkpoint, capsys):
    plain = toy_run(tmp_path, "plain", toy_checkpoint)
    capsys.readouterr()
    bf16 = toy_run(tmp_path, "bf16", toy_checkpoint, "--precision", "bf16")
    err = capsys.readouterr().err
    assert "--precision bf16 is a CUDA option" in err and "compute_dtype=fp32" in err
    assert list(bf16["compute_dtype"]) == ["fp32", "fp32"]
    for col in ("swd", "nfe_per_batch", "straightness"):
        assert list(bf16[col]) == list(plain[col]), col  # the very same numbers


def test_channels_last_is_dropped_for_vectors_with_a_warning(tmp_path, toy_checkpoint, capsys):
    rows = toy_run(tmp_path, "cl", toy_checkpoint, "--channels-last")
    assert "--channels-last applies to images" in capsys.readouterr().err
    assert not rows["channels_last"].any()


def test_channels_last_on_images_changes_only_the_rounding():
    torch.manual_seed(0)
    unet = UNet(1, 28, UNetConfig()).eval()
    model, options = accelerate(unet, Acceleration(channels_last=True), CPU, (1, 28, 28))
    assert isinstance(model, Accelerated) and options.columns()["channels_last"] is True
    x, t = torch.randn(4, 1, 28, 28), torch.rand(4)
    with torch.no_grad():
        out, ref = model(x, t), unet(x, t)
    assert out.is_contiguous() and out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_no_options_leave_the_model_untouched():
    unet = UNet(1, 28, UNetConfig())
    model, options = accelerate(unet, Acceleration(), CPU, (1, 28, 28))
    assert model is unet and options.columns() == {
        "compute_dtype": "fp32",
        "channels_last": False,
        "compiled": False,
    }


def test_compiled_model_gives_the_eager_numbers():
    mlp = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.SiLU(), torch.nn.Linear(16, 2))

    class V(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = mlp

        def forward(self, x, t):
            return self.net(x) * t[:, None]

    v = V().eval()
    model, options = accelerate(v, Acceleration(compile=True, compile_backend="eager"), CPU, (2,))
    x, t = torch.randn(8, 2), torch.rand(8)
    with torch.no_grad():
        assert torch.equal(model(x, t), v(x, t))
    assert options.columns()["compiled"] is True


def test_a_compile_failure_falls_back_to_eager_and_says_so(caplog):
    def broken_backend(gm, example_inputs):
        raise RuntimeError("no C++ compiler here (simulated)")

    v = torch.nn.Linear(2, 2)

    class V(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = v

        def forward(self, x, t):
            return self.lin(x)

    model, options = accelerate(
        V(), Acceleration(compile=True, compile_backend=broken_backend), CPU, (2,)
    )
    calls = []

    def warm(m):
        calls.append(m)
        with torch.no_grad():
            m(torch.zeros(4, 2), torch.zeros(4))

    with caplog.at_level("WARNING", logger="rfbench"):
        eager, options = runtime.compile_or_fall_back(model, options, warm)
    assert "torch.compile failed" in caplog.text and "compiled=False" in caplog.text
    assert options.compile is False and options.columns()["compiled"] is False
    assert len(calls) == 2 and eager is not model
    x = torch.randn(3, 2)
    with torch.no_grad():
        assert torch.equal(eager(x, torch.zeros(3)), v(x))


def test_unknown_precision_is_refused():
    with pytest.raises(Exception, match="unknown precision"):
        Acceleration(precision="fp8")


def test_fit_batch_size_fills_the_free_memory_and_no_more():
    """forward(b) = 10 MB + b * 40 kB; each sample's state is 3 kB, kept 16 times."""
    forward = lambda b: 10_000_000 + 40_000 * b  # noqa: E731
    per_sample = 40_000 + runtime.SOLVER_STATE_COPIES * 3_000
    free = 8_000_000_000
    expected = int((runtime.MEMORY_FRACTION * free - 10_000_000) // per_sample)
    assert expected > 4096  # the cap below bites
    assert fit_batch_size(free, forward, 3_000, limit=50_000) == runtime.MAX_AUTO_BATCH
    small = 100_000_000  # 100 MB free
    b = fit_batch_size(small, forward, 3_000, limit=50_000)
    assert b == int((runtime.MEMORY_FRACTION * small - 10_000_000) // per_sample) == 795
    assert forward(b) + b * runtime.SOLVER_STATE_COPIES * 3_000 <= small
    assert fit_batch_size(small, forward, 3_000, limit=300) == 300  # never more than n
    assert fit_batch_size(1_000, forward, 3_000, limit=300) == 1  # at least one


def test_auto_batch_size_on_a_cpu_keeps_the_presets(tmp_path, toy_checkpoint, capsys):
    rows = toy_run(tmp_path, "auto", toy_checkpoint, "--batch-size", "auto", "--num-samples", "300")
    assert "the preset's batch size" in capsys.readouterr().err
    assert (rows["batch_size"] == min(PRESETS["quick"].batch_size, 300)).all()


@pytest.mark.parametrize("value", ["0", "-3", "big", "auto2"])
def test_bad_batch_size_is_one_line(value, capsys):
    with pytest.raises(SystemExit) as e:
        main(["run", "--dataset", "toy2d", "--batch-size", value])
    assert e.value.code == 2 and len(capsys.readouterr().err.strip().splitlines()) == 1


@pytest.mark.slow
def test_inductor_compile_on_a_cpu_gives_the_eager_numbers(tmp_path, toy_checkpoint):
    plain = toy_run(tmp_path, "plain", toy_checkpoint)
    compiled = toy_run(tmp_path, "compiled", toy_checkpoint, "--compile")
    assert compiled["compiled"].all()
    assert list(compiled["nfe_per_batch"]) == list(plain["nfe_per_batch"])
    pd.testing.assert_series_equal(compiled["swd"], plain["swd"], rtol=1e-4)


# Section: external models through `rfbench run`.


def test_plugin_model_through_run(tmp_path, capsys):
    config = tmp_path / "plugin.json"
    config.write_text(json.dumps({"dim": 2, "seed": 3}))
    argv = [
        "run",
        "--dataset",
        "toy2d",
        "--solvers",
        "euler,rk4",
        "--steps",
        "2",
        "--num-samples",
        "100",
        "--checkpoint",
        "plugin:tests.plugins.velocity:make_linear",
        "--model-config",
        str(config),
        "--noise-at",
        "1",
        "--time-scale",
        "999",
        "--out",
        str(tmp_path / "run"),
    ]
    assert main(argv) == 0
    rows = pd.read_csv(tmp_path / "run" / "results.csv")
    assert rows["model_id"].str.startswith("plugin-make_linear-").all()
    assert (rows["time_convention"] == "t1-noise*999").all()
    assert (rows["status"] == "ok").all() and list(rows["nfe"]) == [2, 8]


def test_torchcfm_checkpoint_through_run(mnist_root, tmp_path):
    from torchcfm.models.unet.unet import UNetModelWrapper

    arch = dict(
        num_res_blocks=1,
        num_channels=32,
        channel_mult=[1, 2],
        num_heads=1,
        num_head_channels=-1,
        attention_resolutions="7",
        dropout=0.0,
    )
    torch.manual_seed(0)
    net = UNetModelWrapper(dim=(1, 28, 28), **arch)
    path = tmp_path / "otcfm_weights_step_10.pt"
    torch.save({"net_model": net.state_dict(), "ema_model": net.state_dict(), "step": 10}, path)
    config = tmp_path / "arch.json"
    config.write_text(json.dumps(arch))
    argv = [
        "run",
        "--dataset",
        "mnist",
        "--data-root",
        str(mnist_root),
        "--solvers",
        "euler",
        "--steps",
        "2",
        "--num-samples",
        "64",
        "--metrics",
        "fid",
        "--checkpoint",
        f"torchcfm:{path}",
        "--model-config",
        str(config),
        "--out",
        str(tmp_path / "run"),
    ]
    assert main(argv) == 0
    rows = pd.read_csv(tmp_path / "run" / "results.csv")
    assert rows["model_id"].str.startswith("torchcfm-").all()
    assert (rows["time_convention"] == "t0-noise").all()
    assert rows["status"].tolist() == ["ok"] and rows["fid"].notna().all()


def test_bad_model_config_is_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    argv = [
        "run",
        "--dataset",
        "toy2d",
        "--checkpoint",
        "plugin:tests.plugins.velocity:make",
        "--model-config",
        str(bad),
        "--out",
        str(tmp_path / "run"),
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "must hold a JSON object" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_convention_options_without_an_external_model_are_refused(tmp_path, capsys):
    argv = ["run", "--dataset", "toy2d", "--noise-at", "1", "--out", str(tmp_path / "run")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--noise-at apply to external models only" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_timed_calls_reuse_the_graph_the_warm_up_compiled():
    """The solver's calls give the model t as the warm-up did (a contiguous [B] vector): a
    stride-0 t once recompiled the model inside the first timed cell."""
    import torch._dynamo

    from rfbench.sample import CountingVelocity, warm_up

    class V(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(2, 2)

        def forward(self, x, t):
            return self.lin(x) * t[:, None]

    torch._dynamo.reset()
    compiles = []

    def counting_backend(gm, example_inputs):
        compiles.append(1)
        return gm.forward

    model, _ = accelerate(
        V().eval(), Acceleration(compile=True, compile_backend=counting_backend), CPU, (2,)
    )
    warm_up(model, (2,), 8, CPU)
    before = len(compiles)
    assert before >= 1
    velocity = CountingVelocity(model)
    x = torch.randn(8, 2)
    velocity(x, 0.25)
    velocity(x, torch.tensor(0.75))
    assert len(compiles) == before
