"""External models: torchcfm checkpoints, plugins, and time conventions against exact answers."""

from __future__ import annotations

import copy
import doctest
import math
import sys

import pytest
import torch

import rfbench.models.external as external
from rfbench.errors import UserError
from rfbench.models.external import (
    ConventionAdapter,
    TimeConvention,
    is_external,
    load_external,
    load_plugin,
    load_torchcfm,
    state_sha256,
)
from rfbench.sample import Measuring, generate, integrate, noise
from rfbench.solvers import Setting

SHAPE = (1, 8, 8)
# The smallest torchcfm UNet worth the name: 32 channels (GroupNorm needs 32), two levels.
TINY = dict(
    dim=SHAPE,
    num_channels=32,
    num_res_blocks=1,
    channel_mult=[1, 2],
    attention_resolutions="4",
    num_heads=1,
    num_head_channels=-1,
    dropout=0.1,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These networks are tiny: one thread. Two threads on a busy 2-core machine wait on each
    other (measured: the torchcfm tests took 35 s instead of 6 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# torchcfm checkpoints.


def _unet(seed: int):
    """A tiny torchcfm UNet with random weights everywhere (their output conv starts at 0)."""
    unet = pytest.importorskip("torchcfm.models.unet.unet")
    torch.manual_seed(seed)
    net = unet.UNetModelWrapper(**TINY)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net.eval()


@pytest.fixture(scope="module")
def nets():
    return {"net": _unet(1), "ema": _unet(2)}


def _save_checkpoint(path, nets, prefix: str = ""):
    """The dict that conditional-flow-matching's train_cifar10.py saves (``module.`` from DDP)."""
    trained = copy.deepcopy(nets["net"])  # a real optimizer and scheduler state, as they save
    optim = torch.optim.Adam(trained.parameters(), lr=2e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(optim, lr_lambda=lambda step: min(step, 10) / 10)
    trained(torch.zeros(1), torch.zeros(1, *SHAPE)).sum().backward()
    optim.step()
    sched.step()

    def sd(net):
        return {prefix + k: v for k, v in net.state_dict().items()}

    torch.save(
        {
            "net_model": sd(nets["net"]),
            "ema_model": sd(nets["ema"]),
            "sched": sched.state_dict(),
            "optim": optim.state_dict(),
            "step": 10,
        },
        path,
    )
    return str(path)


@pytest.mark.parametrize("prefix", ["", "module."])
def test_torchcfm_checkpoint_loads_their_network(tmp_path, nets, prefix):
    path = _save_checkpoint(tmp_path / "otcfm_weights.pt", nets, prefix)
    x, t = torch.randn(3, *SHAPE), torch.tensor([0.0, 0.3, 1.0])
    ema = load_torchcfm(path, config=TINY)
    net = load_torchcfm(path, config=TINY, weights="net")
    assert not ema.training and not any(p.requires_grad for p in ema.parameters())
    assert torch.equal(ema(x, t), nets["ema"](t, x))  # EMA by default, time first for torchcfm
    assert torch.equal(net(x, t), nets["net"](t, x))
    assert not torch.allclose(ema(x, t), net(x, t))

    loaded = load_external("torchcfm:" + path, SHAPE, config=TINY)
    assert torch.equal(loaded.model(x, t), nets["ema"](t, x))  # identity convention
    assert loaded.model_id == f"torchcfm-{state_sha256(nets['ema'].state_dict())[:8]}"
    assert (loaded.source, loaded.convention) == ("torchcfm:" + path, "t0-noise")
    net_id = load_external("torchcfm:" + path, SHAPE, config={**TINY, "weights": "net"}).model_id
    assert net_id == f"torchcfm-{state_sha256(nets['net'].state_dict())[:8]}" != loaded.model_id


def test_torchcfm_bare_state_dict_and_dim_from_the_sample_shape(tmp_path, nets):
    path = tmp_path / "bare.pt"
    torch.save(nets["ema"].state_dict(), path)
    config = {k: v for k, v in TINY.items() if k != "dim"}  # dim comes from the sample shape
    loaded = load_external(f"torchcfm:{path}", SHAPE, config=config)
    x, t = torch.randn(2, *SHAPE), torch.tensor([0.1, 0.9])
    assert torch.equal(loaded.model(x, t), nets["ema"](t, x))


def test_torchcfm_model_samples_through_rfbench(tmp_path, nets):
    model = load_torchcfm(_save_checkpoint(tmp_path / "w.pt", nets), config=TINY)
    run = generate(model, "euler", 6, SHAPE, steps=4, batch_size=4, progress=False)
    assert run.nfe_per_solve == [4, 4]
    assert run.x.shape == (6, *SHAPE) and torch.isfinite(run.x).all()

    heun = generate(model, "heun", 6, SHAPE, steps=4, batch_size=4, progress=False)
    x, ts, net = noise(0, range(6), SHAPE), torch.linspace(0, 1, 5), nets["ema"]
    with torch.no_grad():
        for a, b in zip(ts[:-1], ts[1:]):  # Heun's method, calling torchcfm's net(t, x)
            k1 = net(a.expand(6), x)
            k2 = net(b.expand(6), x + (b - a) * k1)
            x = x + (b - a) / 2 * (k1 + k2)
    torch.testing.assert_close(heun.x, x, rtol=1e-6, atol=1e-6)
    assert heun.nfe_per_solve == [8, 8]


def test_torchcfm_errors_are_one_line(tmp_path, nets, monkeypatch):
    def error(path, **kw) -> str:
        with pytest.raises(UserError) as e:
            load_torchcfm(str(path), **kw)
        assert "\n" not in str(e.value)
        return str(e.value)

    assert "does not exist" in error(tmp_path / "missing.pt", config=TINY)

    torch.save({"model": nets["ema"].state_dict(), "step": 3}, tmp_path / "other.pt")
    msg = error(tmp_path / "other.pt", config=TINY)
    assert "no 'ema_model' entry (keys: model, step)" in msg

    path = _save_checkpoint(tmp_path / "w.pt", nets)
    msg = error(path, config={**TINY, "num_channels": 64})
    assert "do not match" in msg and "'num_channels': 32" in msg  # read from the weights
    assert "pass config" in error(path)  # the CIFAR-10 default does not fit a 1-channel 8x8 UNet
    assert "weights must be one of ['ema', 'net']" in error(path, config=TINY, weights="last")
    assert "cannot build" in error(path, config={**TINY, "no_such_option": 1})

    monkeypatch.setitem(sys.modules, "torchcfm.models.unet.unet", None)  # not installed
    assert "pip install 'rfbench[torchcfm]'" in error(path, config=TINY)


class _CreatesFile:
    """A pickle that creates a file when it is loaded by full unpickling."""

    def __init__(self, target: str):
        self.target = target

    def __reduce__(self):
        return open, (self.target, "w")


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    target, path = tmp_path / "pwned", tmp_path / "evil.pt"
    torch.save({"ema_model": _CreatesFile(str(target))}, path)
    with pytest.raises(UserError, match=r"cannot load torchcfm checkpoint .*evil\.pt safely"):
        load_external(f"torchcfm:{path}", SHAPE, config=TINY)
    assert not target.exists()
    torch.load(path, weights_only=False)  # the payload is live: full unpickling runs it
    assert target.exists()


# Time conventions, against a linear ODE with a closed-form solution.

A, B = 0.7, -1.3  # rfbench's field v(x, t) = A x + B t


def _exact(x0: torch.Tensor, t: float) -> torch.Tensor:
    """The solution of dx/dt = A x + B t from x(0) = x0."""
    c = B / A**2
    return (x0 + c) * math.exp(A * t) - B * t / A - c


def _col(s: torch.Tensor) -> torch.Tensor:
    return s.reshape(-1, 1)


# The same ODE as an external model in its own convention, written out in its own time s.
# noise at s = 1 (s = 1 - t): dx/ds = -dx/dt = -(A x + B (1 - s)).
# t * 999 inputs (s = 999 t): the velocity is still per unit of t = s / 999.
EXTERNAL_FIELDS = {
    (1, 1.0): lambda x, s: -(A * x + B * (1 - _col(s))),
    (0, 999.0): lambda x, s: A * x + B * _col(s) / 999,
    (1, 1000.0): lambda x, s: -(A * x + B * (1 - _col(s) / 1000)),
}


def _solve_rk4(model, x0: torch.Tensor) -> torch.Tensor:
    run = integrate(
        model,
        Setting("rk4", steps=32),
        len(x0),
        lambda lo, hi: x0[lo:hi],
        measuring=Measuring(progress=False),
    )
    assert run.nfe_per_solve == [128]
    return run.x


@pytest.mark.parametrize("noise_at,scale", list(EXTERNAL_FIELDS))
def test_adapted_conventions_solve_the_same_ode(noise_at, scale):
    seen: list[torch.Tensor] = []

    def external_model(x, s):
        seen.append(s)
        return EXTERNAL_FIELDS[noise_at, scale](x, s)

    x0 = noise(0, range(5), (2,)).double()  # float64 states: rk4's error is ~1e-10 here
    convention = TimeConvention.parse(noise_at, scale)
    x1 = _solve_rk4(ConventionAdapter(external_model, convention), x0)
    torch.testing.assert_close(x1, _exact(x0, 1.0).float(), rtol=1e-6, atol=1e-6)

    inputs = torch.cat(seen)
    assert inputs.min() >= 0 and inputs.max() <= scale  # the model saw its own time range
    assert (inputs.max() > 1) == (scale > 1)
    wrong = _solve_rk4(ConventionAdapter(external_model), x0)  # taken as rfbench's convention
    assert (wrong - _exact(x0, 1.0).float()).abs().max() > 0.1


def test_identity_convention_is_bit_identical():
    model = load_plugin("tests.plugins.velocity:make_linear", {"dim": 3})
    x, t = torch.randn(4, 3), torch.rand(4)
    assert torch.equal(ConventionAdapter(model)(x, t), model(x, t))
    assert torch.equal(ConventionAdapter(model, TimeConvention(0, 1.0))(x, t), model(x, t))


def test_time_convention_labels_and_validation():
    assert TimeConvention().label == "t0-noise"
    assert TimeConvention.parse(1, 999).label == "t1-noise*999"
    assert TimeConvention.parse("1", "1000").label == "t1-noise*1000"
    assert TimeConvention.parse(0.0, 0.5) == TimeConvention(0, 0.5)
    for noise_at, scale, message in [
        (2, 1.0, "noise_at must be 0"),
        (True, 1.0, "noise_at must be 0"),
        (0, 0.0, "scale must be finite and > 0"),
        (0, -1, "scale must be finite and > 0"),
        (0, float("inf"), "scale must be finite and > 0"),
        (0, float("nan"), "scale must be finite and > 0"),
        (0, "fast", "scale must be a number"),
    ]:
        with pytest.raises(UserError, match=message):
            TimeConvention.parse(noise_at, scale)


# Plugins.


def test_plugin_model_matches_its_function_and_samples():
    loaded = load_external("plugin:tests.plugins.velocity:make", (2,), config={"scale": 2.0})
    x, t = torch.randn(5, 2), torch.rand(5)
    assert torch.equal(loaded.model(x, t), 2.0 * t[:, None] * x)
    assert loaded.source == "plugin:tests.plugins.velocity:make"
    assert loaded.model_id.startswith("plugin-make-") and len(loaded.model_id) == 20
    other = load_external("plugin:tests.plugins.velocity:make", (2,), config={"scale": 3.0})
    assert other.model_id != loaded.model_id  # a function without weights: its kwargs count

    run = generate(loaded.model, "rk4", 6, (2,), steps=16, batch_size=4, progress=False)
    assert run.nfe_per_solve == [64, 64]
    exact = noise(0, range(6), (2,)) * math.e  # dx/dt = 2 t x: x0 exp(t^2) at t = 1
    torch.testing.assert_close(run.x, exact, rtol=1e-5, atol=1e-5)


def test_plugin_module_id_follows_its_weights():
    def model_id(seed: int) -> str:
        ref = "plugin:tests.plugins.velocity:make_linear"
        return load_external(ref, (2,), config={"seed": seed}).model_id

    assert model_id(0) == model_id(0) != model_id(1)
    assert model_id(0).startswith("plugin-make_linear-")


@pytest.mark.parametrize(
    "ref,config,message",
    [
        ("plugin:nocolon", None, "is not of the form package.module:callable"),
        ("plugin:no.such.module:f", None, "cannot import plugin module 'no.such.module'"),
        ("plugin:tests.plugins.velocity:missing", None, "has no attribute 'missing'"),
        ("plugin:tests.plugins.velocity:make_not_callable", None, "returned a int, not a velocity"),
        ("plugin:tests.plugins.velocity:make", {"speed": 1}, "does not take config ['speed']"),
        ("nocolon", None, "is not an external model"),
    ],
)
def test_bad_plugins_are_one_line_errors(ref, config, message):
    with pytest.raises(UserError) as e:
        load_external(ref, (2,), config=config)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_load_plugin_checks_the_spec_form():
    with pytest.raises(UserError, match="is not of the form"):
        load_plugin("nocolon")


def test_shape_probe_names_both_shapes():
    with pytest.raises(UserError) as e:
        load_external("plugin:tests.plugins.velocity:make_wrong_shape", (2,))
    msg = str(e.value)
    assert "shape [2, 1] for inputs of shape [2, 2]" in msg and "sample shape is (2,)" in msg


def test_is_external():
    assert is_external("torchcfm:w.pt") and is_external("plugin:a.b:c")
    assert not is_external("runs/mnist/checkpoint.pt") and not is_external("quick")


def test_module_docstring_examples():
    assert doctest.testmod(external).failed == 0
