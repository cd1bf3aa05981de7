"""`rfbench cache add`: a trained checkpoint becomes the model `run` reuses, and nothing
already cached is ever replaced."""

from __future__ import annotations

import hashlib
import re
import shlex

import numpy as np
import pandas as pd
import pytest
import torch

from rfbench.cli import main


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("RFBENCH_CACHE", str(root))
    return root / "models"


@pytest.fixture(scope="module")
def toy_checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy-1rf")
    assert main(["train", "--dataset", "toy2d", "--epochs", "1", "--out", str(out)]) == 0
    return out / "checkpoint.pt"


def _run_log(tmp_path, capsys, name="run"):
    argv = ["run", "--dataset", "toy2d", "--epochs", "1", "--solvers", "euler", "--steps", "1"]
    argv += ["--num-samples", "50", "--out", str(tmp_path / name)]
    assert main(argv) == 0
    return capsys.readouterr().err


def test_added_checkpoint_is_the_model_run_reuses(cache, toy_checkpoint, tmp_path, capsys):
    assert main(["cache", "add", str(toy_checkpoint)]) == 0
    out = capsys.readouterr().out
    (cached,) = cache.glob("*.pt")
    assert _sha(cached) == _sha(toy_checkpoint)
    assert "rfbench run --dataset toy2d --preset quick --epochs 1` reuses it" in out
    err = _run_log(tmp_path, capsys)
    assert "reusing cached model" in err and "training toy2d" not in err
    assert _sha(cached) == _sha(toy_checkpoint)  # run read it, and wrote nothing over it
    # the same file again: a no-op that says so
    assert main(["cache", "add", str(toy_checkpoint)]) == 0
    assert "already cached" in capsys.readouterr().out
    assert main(["cache", "list"]) == 0
    listing = capsys.readouterr().out
    assert str(cached) in listing and "1/1" in listing


def test_without_it_run_trains(cache, tmp_path, capsys):
    """The control for the test above: with an empty cache, the same run trains."""
    err = _run_log(tmp_path, capsys)
    assert "training toy2d" in err and "reusing cached model" not in err
    assert len(list(cache.glob("*.pt"))) == 1


def test_a_different_cached_file_is_left_alone(cache, toy_checkpoint, capsys):
    assert main(["cache", "add", str(toy_checkpoint)]) == 0
    (cached,) = cache.glob("*.pt")
    cached.write_bytes(b"someone else's model")
    capsys.readouterr()
    assert main(["cache", "add", str(toy_checkpoint)]) == 2
    err = capsys.readouterr().err
    assert "another file is cached" in err and len(err.strip().splitlines()) == 1
    assert cached.read_bytes() == b"someone else's model"


def test_a_file_cached_meanwhile_is_not_overwritten(cache, toy_checkpoint, capsys, monkeypatch):
    """A run that finishes training this model between cache add's check and its write:
    the run's file stays, and cache add says so in one line."""
    import rfbench.atomic

    real, target = rfbench.atomic.ensure_writable_dir, _cache_path(toy_checkpoint)

    def race(path, what):
        made = real(path, what)
        if path == target.parent:  # cache_dir() checks the cache root first: wait for ours
            target.write_bytes(b"the run's model")  # the run's file lands now
        return made

    monkeypatch.setattr(rfbench.atomic, "ensure_writable_dir", race)
    assert main(["cache", "add", str(toy_checkpoint)]) == 2
    err = capsys.readouterr().err
    assert "another file is cached" in err and len(err.strip().splitlines()) == 1
    assert target.read_bytes() == b"the run's model"
    assert not list(cache.glob(".*.tmp"))  # no temporary file left behind


def _cache_path(checkpoint):
    from rfbench.candidates import model_cache_path
    from rfbench.train import load_model

    return model_cache_path(load_model(checkpoint).spec)


def test_atomic_write_without_replace_keeps_what_is_there(tmp_path):
    from rfbench.atomic import atomic_write

    target = tmp_path / "f"
    atomic_write(target, lambda f: f.write(b"first"), replace=False)
    with pytest.raises(FileExistsError):
        atomic_write(target, lambda f: f.write(b"second"), replace=False)
    assert target.read_bytes() == b"first" and sorted(tmp_path.iterdir()) == [target]
    atomic_write(target, lambda f: f.write(b"third"))  # the default replaces
    assert target.read_bytes() == b"third"


def test_no_hard_links_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    import errno
    import os

    from rfbench.atomic import atomic_write
    from rfbench.errors import UserError

    def no_links(src, dst):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    with pytest.raises(UserError, match="no hard links"):
        atomic_write(tmp_path / "f", lambda f: f.write(b"x"), replace=False)
    assert list(tmp_path.iterdir()) == []


def _edited(src, dst, edit):
    ckpt = torch.load(src, weights_only=False)
    edit(ckpt)
    torch.save(ckpt, dst)
    return dst


@pytest.mark.parametrize(
    "edit,needle",
    [
        (lambda c: c["spec"]["train"].update(lr=0.5), "train.lr: 0.5 != 0.001"),
        (lambda c: c["spec"].update(data_hash="0" * 64), "not the local split's"),
        (lambda c: c.update(epoch=0), "partly trained (0 of 1 epochs)"),
        (lambda c: c["spec"].update(preset=""), "names no preset"),
        (lambda c: c["spec"].update(preset="nosuch"), "which this rfbench lacks"),
    ],
)
def test_a_checkpoint_run_would_not_train_is_refused(
    cache, toy_checkpoint, tmp_path, edit, needle, capsys
):
    bad = _edited(toy_checkpoint, tmp_path / "bad.pt", edit)
    assert main(["cache", "add", str(bad)]) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1, err
    assert not cache.exists() or not list(cache.glob("*.pt"))


def test_reflowed_model_is_refused(cache, toy_checkpoint, tmp_path, capsys):
    two = tmp_path / "2rf"
    argv = ["reflow", "--checkpoint", str(toy_checkpoint), "--pairs", "64", "--solver", "euler"]
    assert main([*argv, "--steps", "2", "--epochs", "1", "--out", str(two)]) == 0
    capsys.readouterr()
    assert main(["cache", "add", str(two / "checkpoint.pt")]) == 2
    assert "is a 2rf model" in capsys.readouterr().err
    assert not cache.exists() or not list(cache.glob("*.pt"))


def test_missing_checkpoint_is_one_line(cache, tmp_path, capsys):
    assert main(["cache", "add", str(tmp_path / "nope.pt")]) == 2
    err = capsys.readouterr().err
    assert "nope.pt" in err and len(err.strip().splitlines()) == 1


def test_a_directory_at_the_cache_path_is_one_line(cache, toy_checkpoint, capsys):
    assert main(["cache", "add", str(toy_checkpoint)]) == 0
    (cached,) = cache.glob("*.pt")
    cached.unlink()
    cached.mkdir()
    capsys.readouterr()
    assert main(["cache", "add", str(toy_checkpoint)]) == 2
    assert "holds a directory" in capsys.readouterr().err and cached.is_dir()


def test_image_folder_checkpoint_prints_the_run_that_reuses_it(
    cache, tmp_path, capsys, monkeypatch
):
    """An unlabelled folder's model: `cache add --data-root` prints a run command with the
    checkpoint's --image-size and the --data-root, and that command (asking for the
    inversion metric only, so needing no Inception weights) reuses the model."""
    from PIL import Image

    import rfbench.metrics.inception as inception

    folder = tmp_path / "my pictures"  # a space: the printed command quotes it
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    out = tmp_path / "model"
    argv = ["train", "--dataset", "image-folder", "--data-root", str(folder)]
    assert main([*argv, "--image-size", "8", "--epochs", "1", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["cache", "add", str(out / "checkpoint.pt"), "--data-root", str(folder)]) == 0
    printed = capsys.readouterr().out
    run = re.search(r"`(rfbench run [^`]*)` reuses it", printed).group(1)
    assert shlex.split(run) == [
        *("rfbench", "run", "--dataset", "image-folder", "--preset", "quick"),
        *("--image-size", "8", "--data-root", str(folder)),
    ]

    def no_inception(*args, **kwargs):
        raise AssertionError("--metrics inversion asked for the Inception extractor")

    monkeypatch.setattr(inception, "inception_extractor", no_inception)
    extra = ["--solvers", "euler", "--steps", "1", "--num-samples", "4", "--seeds", "0"]
    extra += ["--metrics", "inversion", "--out", str(tmp_path / "run")]
    assert main([*shlex.split(run)[1:], *extra]) == 0
    err = capsys.readouterr().err
    assert "reusing cached model" in err and "training image-folder" not in err
    frame = pd.read_csv(tmp_path / "run" / "results.csv")
    assert frame["status"].tolist() == ["ok"] and frame["inversion_rmse"].notna().all()
    assert frame[["fid", "feature_extractor", "reference"]].isna().all().all()


def test_inversion_alone_trains_no_classifier(mnist_root, tmp_path, capsys, monkeypatch):
    """The labelled, greyscale half of the above: MNIST's extractor would be the classifier,
    which --metrics inversion must neither train nor read; options it cannot use are named."""
    import rfbench.metrics.classifier as classifier

    def no_classifier(*args, **kwargs):
        raise AssertionError("--metrics inversion asked for the classifier")

    monkeypatch.setattr(classifier, "get_classifier", no_classifier)
    argv = ["run", "--dataset", "mnist", "--data-root", str(mnist_root), "--epochs", "1"]
    argv += ["--solvers", "euler", "--steps", "1", "--num-samples", "8", "--seeds", "0"]
    argv += ["--metrics", "inversion", "--feature-extractor", "classifier"]
    assert main([*argv, "--out", str(tmp_path / "run")]) == 0
    assert "--feature-extractor unused" in capsys.readouterr().err
    frame = pd.read_csv(tmp_path / "run" / "results.csv")
    assert frame["inversion_rmse"].notna().all()
    assert frame[["fid", "feature_extractor", "reference"]].isna().all().all()
