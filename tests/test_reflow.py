"""Reflow and distillation on toy2d, in seconds: 2-RF is straighter than 1-RF and better at
one Euler step; a distilled model's one step lands on its pairs; pair generation resumes
exactly."""

from __future__ import annotations

from dataclasses import replace

import pandas as pd
import pytest
import torch

from rfbench import candidates, reflow
from rfbench.cli import main
from rfbench.data import load_split, toy2d_sample
from rfbench.errors import UserError
from rfbench.flow import sample_grid_t, sample_t
from rfbench.metrics.toy import sliced_wasserstein
from rfbench.sample import generate
from rfbench.train import load_model, train

EPOCHS_1RF = 15  # a 1-RF that is good at many steps and poor at one
PAIRS = 4000
EPOCHS_2RF = 15
N_EVAL = 2000


def _exit(argv) -> int:
    """main's exit code, argparse's included (it exits with SystemExit(2))."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


def _measure(model) -> dict:
    """Straightness along 16 Euler steps, and the sliced W2 to the truth at 1 and 16 steps."""
    many = generate(model, "euler", N_EVAL, (2,), seed=7, steps=16, record=True, progress=False)
    one = generate(model, "euler", N_EVAL, (2,), seed=7, steps=1, progress=False)
    truth = toy2d_sample(N_EVAL, 99)
    return {
        "straightness": float(many.straightness.mean()),
        "swd_1": sliced_wasserstein(one.x, truth),
        "swd_16": sliced_wasserstein(many.x, truth),
    }


@pytest.fixture(scope="module")
def flows(tmp_path_factory):
    """1-RF, its pairs (rk4, 16 steps), the 2-RF and the 1-RF distilled to one step."""
    root = tmp_path_factory.mktemp("reflow")
    data = load_split("toy2d")
    rf1 = train(candidates.model_spec("toy2d", "quick", data, 0, EPOCHS_1RF), data, progress=False)
    rf1.path = str(root / "1rf.pt")
    spec = reflow.pair_spec(rf1, PAIRS, "rk4", steps=16, shard_size=1000)
    store = reflow.generate_pairs(rf1, spec, root, batch_size=1000, progress=False)
    recipe = replace(rf1.spec.train, epochs=EPOCHS_2RF)
    rf2 = reflow.reflow(rf1, store, recipe, root / "2rf.pt", progress=False)
    d1 = reflow.reflow(rf1, store, recipe, root / "d1.pt", distill_steps=1, progress=False)
    return {"root": root, "store": store, "1rf": rf1, "2rf": rf2, "d1": d1}


def test_2rf_is_straighter_and_better_at_one_step(flows):
    one, two = _measure(flows["1rf"].model), _measure(flows["2rf"].model)
    # `python benchmarks/reflow_margins.py` (these settings, training seeds 0, 1, 2; 2-core
    # CPU): straightness 0.720-0.732 for 1-RF against 0.0112-0.0120 for 2-RF (ratio
    # <= 0.017); one-step sliced W2 1.325-1.339 against 0.184-0.188 (ratio <= 0.142); at 16
    # steps 0.175-0.177 against 0.177-0.178. The margins leave 2.8x or more beyond the
    # worst seed.
    assert two["straightness"] < 0.05 * one["straightness"]
    assert two["swd_1"] < 0.4 * one["swd_1"]
    assert two["swd_16"] < 1.2 * one["swd_16"]  # reflow keeps many-step quality


def test_distilled_one_step_lands_on_its_pairs(flows):
    x0, x1, _ = flows["store"].load()
    x0, x1 = x0[:1000], x1[:1000]

    def one_step_error(model) -> float:
        with torch.no_grad():
            out = x0 + model(x0, torch.zeros(len(x0)))
        return float((out - x1).pow(2).sum(1).mean())

    parent, distilled = one_step_error(flows["1rf"].model), one_step_error(flows["d1"].model)
    assert distilled < 0.1 * parent


def test_lineage_is_recorded_in_the_checkpoint(flows):
    rf1 = flows["1rf"]
    two = load_model(flows["root"] / "2rf.pt")
    assert two.spec.lineage.k == 2 and two.spec.lineage.distill_steps is None
    assert two.spec.lineage.parent == rf1.model_id
    assert two.spec.lineage.pair_solver == "rk4" and two.spec.lineage.pair_setting == "steps=16"
    assert two.spec.lineage.pairs == PAIRS
    assert "-2rf-" in two.model_id and two.model_id == flows["2rf"].model_id
    d1 = load_model(flows["root"] / "d1.pt")
    assert d1.spec.lineage.k == 1 and d1.spec.lineage.distill_steps == 1
    assert "-1rf-d1-" in d1.model_id


def test_pair_generation_resumes_without_duplicates_or_gaps(flows, tmp_path, monkeypatch):
    rf1 = flows["1rf"]
    spec = reflow.pair_spec(rf1, 2500, "euler", steps=4, seed=3, shard_size=1000)
    whole = reflow.generate_pairs(rf1, spec, tmp_path / "whole", progress=False).load()

    calls = {"n": 0}
    real = reflow.integrate

    def dies_on_the_second_shard(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # the process stops in the middle of shard 1
        return real(*args, **kwargs)

    monkeypatch.setattr(reflow, "integrate", dies_on_the_second_shard)
    with pytest.raises(KeyboardInterrupt):
        reflow.generate_pairs(rf1, spec, tmp_path / "cut", progress=False)
    monkeypatch.setattr(reflow, "integrate", real)
    store = reflow.PairStore(tmp_path / "cut")
    assert sorted(store.manifest()["shards"]) == ["0"]
    with pytest.raises(UserError, match="missing 2 of 3 shards"):
        store.load()
    resumed = reflow.generate_pairs(rf1, spec, tmp_path / "cut", progress=False).load()
    assert torch.equal(resumed[0], whole[0]) and torch.equal(resumed[1], whole[1])
    assert len(resumed[0]) == 2500
    assert resumed[2]["shards"]["2"] == {
        **whole[2]["shards"]["2"],
        "wall_time_s": resumed[2]["shards"]["2"]["wall_time_s"],
    }
    other = reflow.pair_spec(rf1, 2500, "euler", steps=8, seed=3, shard_size=1000)
    with pytest.raises(UserError, match="another steps"):
        reflow.generate_pairs(rf1, other, tmp_path / "cut", progress=False)
    # a setting the manifest could not record is refused, not silently made batched
    with pytest.raises(UserError, match="batched stepping"):
        reflow.pair_spec(rf1, 10, "rk45", rtol=1e-3, stepping="per-sample")


def test_timestep_distributions():
    g = torch.Generator().manual_seed(0)
    u = sample_t(100_000, g, dist="u-shaped")
    assert u.min() >= 0 and u.max() <= 1
    # The CDF (sinh(4(t - 1/2)) + sinh(2)) / (2 sinh 2) at 0.1 is 0.1725; both ends alike.
    assert float((u < 0.1).float().mean()) == pytest.approx(0.1725, abs=0.005)
    assert float((u > 0.9).float().mean()) == pytest.approx(0.1725, abs=0.005)
    assert float((sample_t(100_000, g) < 0.1).float().mean()) == pytest.approx(0.1, abs=0.005)
    assert set(sample_grid_t(1000, 4, g).tolist()) == {0.0, 0.25, 0.5, 0.75}
    with pytest.raises(ValueError, match="unknown timestep"):
        sample_t(3, g, dist="beta")


def test_cli_reflow_and_a_grid_over_models(tmp_path, capsys):
    one = tmp_path / "1rf"
    base = ["--dataset", "toy2d", "--epochs", "3"]
    assert main(["train", *base, "--out", str(one)]) == 0
    two = tmp_path / "2rf"
    argv = [
        "reflow",
        "--checkpoint",
        str(one / "checkpoint.pt"),
        "--pairs",
        "1500",
        "--solver",
        "euler",
        "--steps",
        "8",
        "--epochs",
        "2",
        "--timesteps",
        "u-shaped",
        "--shard-size",
        "500",
        "--out",
        str(two),
    ]
    assert main(argv) == 0
    assert sorted(p.name for p in (two / "pairs").iterdir()) == [
        "manifest.json",
        "shard-00000.pt",
        "shard-00001.pt",
        "shard-00002.pt",
    ]
    model = load_model(two / "checkpoint.pt")
    assert model.spec.train.timesteps == "u-shaped" and model.spec.lineage.k == 2
    capsys.readouterr()
    assert main(argv) == 2 and "--resume" in capsys.readouterr().err
    assert main([*argv, "--resume"]) == 0  # everything done: nothing redone

    out = tmp_path / "run"
    ckpts = f"{one / 'checkpoint.pt'},{two / 'checkpoint.pt'}"
    run = [
        "run",
        "--dataset",
        "toy2d",
        "--checkpoint",
        ckpts,
        "--solvers",
        "euler",
        "--steps",
        "1,4",
        "--num-samples",
        "300",
        "--out",
        str(out),
    ]
    assert main(run) == 0
    frame = pd.read_csv(out / "results.csv")
    assert len(frame) == 4 and (frame["status"] == "ok").all()
    ids = sorted(frame["model_id"].unique())
    assert len(ids) == 2 and any("-2rf-" in i for i in ids)
    capsys.readouterr()
    same = ["--checkpoint", f"{one / 'checkpoint.pt'},{one / 'checkpoint.pt'}"]
    assert _exit(["run", "--dataset", "toy2d", *same, "--out", str(tmp_path / "x")]) == 2
    assert "repeats an entry" in capsys.readouterr().err


def test_cli_reflow_bad_input(tmp_path, capsys):
    one = tmp_path / "1rf"
    assert main(["train", "--dataset", "toy2d", "--epochs", "1", "--out", str(one)]) == 0
    ck = str(one / "checkpoint.pt")
    capsys.readouterr()
    for argv, needle in (
        (["--pairs", "0"], "must be a finite number > 0"),
        (["--pairs", "10", "--solver", "euler"], "give --steps"),
        (["--pairs", "10", "--tols", "-1"], "must be a finite number > 0"),
        (["--pairs", "10", "--solver", "nope"], "invalid choice"),
    ):
        code = _exit(["reflow", "--checkpoint", ck, *argv, "--out", str(tmp_path / "o")])
        err = capsys.readouterr().err
        assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err


def test_lpips_is_refused_without_its_weights_and_trains_with_them(tmp_path, monkeypatch):
    import torchvision
    from torch_fidelity import sample_similarity_lpips as fidelity_lpips

    from rfbench.metrics import lpips

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(UserError, match="weights-vgg16-lpips.pth, vgg16-397923af.pth"):
        lpips.lpips_network()
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    for name in lpips.LPIPS_FILES:
        (tmp_path / "hub" / "checkpoints" / name).write_bytes(b"")
    # With the files there, the real network is built; random weights stand in for the
    # ImageNet ones (this machine has none), which is all the wiring test needs.
    monkeypatch.setattr(fidelity_lpips, "load_state_dict_from_url", lambda *a, **k: None)
    monkeypatch.setattr(
        fidelity_lpips.SampleSimilarityLPIPS, "load_state_dict", lambda self, sd: None
    )
    monkeypatch.setattr(
        fidelity_lpips,
        "torchvision_load_pretrained_vgg16",
        lambda **k: torchvision.models.vgg16(weights=None),
    )
    monkeypatch.setattr(lpips, "LPIPS_RESIZE", 32)  # small, for speed
    net = lpips.lpips_network()
    leaf = torch.rand(2, 1, 28, 28, requires_grad=True)
    a, b = leaf * 2 - 1, torch.rand(2, 1, 28, 28) * 2 - 1
    loss = lpips.lpips_loss(net, a, b)
    loss.backward()
    assert leaf.grad is not None and leaf.grad.abs().sum() > 0
    assert loss.item() > 0 and lpips.lpips_loss(net, b, b).item() == pytest.approx(0, abs=1e-6)
    # And a distillation step trains through it.
    from rfbench.config import PRESETS
    from rfbench.data import DataSplit
    from rfbench.train import Lineage, ModelSpec

    g = torch.Generator().manual_seed(0)
    x0, x1 = torch.randn(8, 1, 28, 28, generator=g), torch.rand(8, 1, 28, 28, generator=g)
    data = DataSplit("mnist", "pairs", x1, None, "h", "test")
    spec = ModelSpec(
        "mnist",
        (1, 28, 28),
        PRESETS["quick"].unet,
        PRESETS["quick"].mlp,
        replace(PRESETS["quick"].train, epochs=1, batch_size=4, loss="lpips"),
        "h",
        "quick",
        Lineage(1, "parent", "", "euler", "steps=4", 8, distill_steps=1),
    )
    trained = train(spec, data, x0=x0, progress=False)
    assert len(trained.losses) == 1 and trained.losses[0] > 0
    with pytest.raises(UserError, match="distillation only"):
        train(replace(spec, lineage=None), data, progress=False)


def test_pair_noise_is_never_evaluation_noise(flows):
    """Pairs start from the "pairs" stream: for every seed, none of a model's training
    noise is the noise that evaluation (the "samples" stream) draws."""
    from rfbench.sample import noise

    x0, _, manifest = flows["store"].load()
    assert manifest["spec"]["stream"] == "pairs" and manifest["spec"]["seed"] == 0
    assert torch.equal(x0, noise(0, range(PAIRS), (2,), "pairs"))
    training = {tuple(row) for row in x0.tolist()}
    for seed in range(3):
        evaluation = {tuple(row) for row in noise(seed, range(PAIRS), (2,)).tolist()}
        assert not training & evaluation
    lineage = load_model(flows["root"] / "2rf.pt").spec.lineage
    assert (lineage.pair_seed, lineage.pair_stream) == (0, "pairs")
    assert lineage.evaluation_overlap([0, 1, 2]) == []


def test_old_reflowed_checkpoints_are_refused_on_their_training_seed(flows, tmp_path, capsys):
    """A checkpoint whose pairs came from the evaluation's own stream (rfbench before the
    pair stream) is refused on the seed that was its training noise, read from its pairs'
    manifest beside it where its lineage lacks it, and runs on other seeds; with no record
    of that seed at all it runs with a warning."""
    import json

    from rfbench.train import read_checkpoint, write_checkpoint

    ckpt = read_checkpoint(flows["root"] / "2rf.pt")
    old = dict(ckpt["spec"]["lineage"])
    del old["pair_seed"], old["pair_stream"]
    ckpt["spec"] = {**ckpt["spec"], "lineage": old}
    write_checkpoint(tmp_path / "old" / "checkpoint.pt", ckpt)
    (tmp_path / "old" / "pairs").mkdir()
    (tmp_path / "old" / "pairs" / "manifest.json").write_text(json.dumps({"spec": {"seed": 3}}))
    base = [
        "run",
        "--dataset",
        "toy2d",
        "--checkpoint",
        str(tmp_path / "old" / "checkpoint.pt"),
        "--solvers",
        "euler",
        "--steps",
        "1",
        "--num-samples",
        "50",
    ]
    assert _exit([*base, "--seeds", "1,3", "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "seed 3 of the evaluation's" in err and "use --seeds without 3" in err
    assert err.count("\n") == 1 and not (tmp_path / "a").exists()
    assert _exit([*base, "--seeds", "0,1", "--out", str(tmp_path / "b")]) == 0
    (tmp_path / "old" / "pairs" / "manifest.json").unlink()
    capsys.readouterr()
    assert _exit([*base, "--seeds", "0", "--out", str(tmp_path / "c")]) == 0
    assert "unrecorded seed" in capsys.readouterr().err
    ckpt["spec"]["lineage"] = {**old, "pair_stream": "bogus"}
    write_checkpoint(tmp_path / "bogus.pt", ckpt)
    bogus = [*base[:3], "--checkpoint", str(tmp_path / "bogus.pt"), *base[5:]]
    assert _exit([*bogus, "--seeds", "1", "--out", str(tmp_path / "d")]) == 2
    assert "unknown pair noise stream 'bogus'" in capsys.readouterr().err


def test_accelerated_pairs_equal_plain_ones_and_say_how_they_ran(flows, tmp_path):
    from rfbench.runtime import Acceleration

    rf1 = flows["1rf"]
    spec = reflow.pair_spec(rf1, 1500, "euler", steps=4, seed=5, shard_size=1000)
    plain = reflow.generate_pairs(rf1, spec, tmp_path / "plain", progress=False).load()
    graphs = []

    def counting(gm, example_inputs):  # torch.compile's path without a C++ toolchain
        def run(*args):
            graphs.append(len(args))
            return gm.forward(*args)

        return run

    fast = Acceleration(compile=True, compile_backend=counting)
    compiled = reflow.generate_pairs(
        rf1, spec, tmp_path / "fast", acceleration=fast, progress=False
    ).load()
    # the compiled network made the pairs: 4 Euler calls per batch, past the warm-up's
    assert len(graphs) >= 2 + 4 * 2
    assert torch.equal(compiled[1], plain[1]) and torch.equal(compiled[0], plain[0])
    assert {s["compiled"] for s in compiled[2]["shards"].values()} == {True}
    assert {s["compiled"] for s in plain[2]["shards"].values()} == {False}

    def broken(gm, example_inputs):
        raise RuntimeError("no C++ compiler here (simulated)")

    spec2 = replace(spec, pairs=500)
    fell = reflow.generate_pairs(
        rf1,
        spec2,
        tmp_path / "fell",
        acceleration=Acceleration(compile=True, compile_backend=broken),
        progress=False,
    ).load()
    assert torch.equal(fell[1], plain[1][:500])
    assert fell[2]["shards"]["0"]["compiled"] is False  # it ran eager, and says so
    # a pair set is made in one precision: shards recorded as bf16 are not resumed in fp32
    store = reflow.PairStore(tmp_path / "plain")
    manifest = store.manifest()
    del manifest["shards"]["1"]
    manifest["shards"]["0"]["compute_dtype"] = "bf16"
    store._write_manifest(manifest)
    with pytest.raises(UserError, match="pairs made in bf16; resume them with --precision bf16"):
        reflow.generate_pairs(rf1, spec, tmp_path / "plain", progress=False)


def test_cli_reflow_passes_its_speed_options_to_the_pairs(tmp_path, monkeypatch):
    ckpt = tmp_path / "1rf.pt"
    assert _exit(["train", "--dataset", "toy2d", "--epochs", "1", "--out", str(tmp_path)]) == 0
    (tmp_path / "checkpoint.pt").rename(ckpt)
    seen = {}

    def stop(parent, spec, out, **kwargs):
        seen.update(kwargs)
        raise UserError("stopped after the options were seen")

    monkeypatch.setattr(reflow, "generate_pairs", stop)
    argv = ["reflow", "--checkpoint", str(ckpt), "--pairs", "10", "--out", str(tmp_path / "r")]
    assert _exit([*argv, "--compile", "--channels-last", "--precision", "bf16"]) == 2
    got = seen["acceleration"]
    assert (got.compile, got.channels_last, got.precision) == (True, True, "bf16")
    assert _exit([*argv[:-1], str(tmp_path / "r2")]) == 2
    got = seen["acceleration"]
    assert (got.compile, got.channels_last, got.precision) == (False, False, "fp32")
