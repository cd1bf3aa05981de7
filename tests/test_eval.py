"""Samples out (--save-samples), reference statistics in (--reference-stats, rfbench stats),
and scoring samples on disk (rfbench eval), end to end on the small IDX digits the tests
write, with the offline classifier as the extractor (Inception's own tests are in
test_inception.py)."""

from __future__ import annotations

import hashlib
import os
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from rfbench.cli import main
from rfbench.errors import UserError
from rfbench.metrics.refstats import read_stats, statistics_of, write_stats
from rfbench.results import ALL_SAMPLES, cell_id
from rfbench.samples_io import NpzWriter, open_samples, sample_writer


def _run(argv, capsys):
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def _mnist_run(mnist_root, out, *extra):
    return [
        "run",
        "--dataset",
        "mnist",
        "--data-root",
        str(mnist_root),
        "--solvers",
        "euler",
        "--steps",
        "1,2",
        "--epochs",
        "1",
        "--num-samples",
        "120",
        "--batch-size",
        "50",
        "--out",
        str(out),
        *extra,
    ]


@pytest.fixture(scope="module")
def saved_run(mnist_root, tmp_path_factory):
    """A run of two cells whose every sample was saved as npz."""
    out = tmp_path_factory.mktemp("saved") / "run"
    assert main(_mnist_run(mnist_root, out, "--save-samples", "npz")) == 0
    return out


def _eval(capsys, *argv):
    return _run(["eval", *map(str, argv)], capsys)


def test_saved_npz_is_every_sample_as_the_metric_saw_it(saved_run, mnist_root, tmp_path, capsys):
    frame = pd.read_csv(saved_run / "results.csv")
    assert len(frame) == 2 and (frame["status"] == "ok").all()
    for row in frame.to_dict("records"):
        arr = np.load(saved_run / ALL_SAMPLES / f"{cell_id(row)}.npz")["arr_0"]
        assert arr.shape == (120, 28, 28, 1) and arr.dtype == np.uint8
        first = np.load(saved_run / "samples" / f"{cell_id(row)}.npz")["x"]  # [64, 1, 28, 28]
        np.testing.assert_array_equal(arr[:64], first.transpose(0, 2, 3, 1))
        assert len(np.unique(arr)) > 50  # images, not a constant
    # scored again from the files: the same images, so the same FID and KID (to float32's
    # batch-to-batch rounding: the run fed the extractor 50 images at a time, eval 500)
    code, _, err = _eval(
        capsys, saved_run, "--dataset", "mnist", "--data-root", mnist_root, "--out", tmp_path / "e"
    )
    assert code == 0, err
    again = pd.read_csv(tmp_path / "e" / "results.csv")
    merged = frame.merge(again, on=["solver", "steps", "seed"], suffixes=("", "_eval"))
    assert len(merged) == 2
    np.testing.assert_allclose(merged["fid_eval"], merged["fid"], rtol=1e-6)
    np.testing.assert_allclose(merged["kid_mean_eval"], merged["kid_mean"], rtol=1e-5)
    assert (merged["nfe_eval"] == merged["nfe"]).all()  # the run's own columns carried over
    assert (merged["feature_extractor_eval"] == merged["feature_extractor"]).all()


def test_png_folder_holds_the_same_images_as_the_npz(saved_run, mnist_root, tmp_path, capsys):
    out = tmp_path / "png"
    argv = _mnist_run(mnist_root, out, "--save-samples", "png", "--steps", "1")
    code, _, err = _run(argv, capsys)
    assert code == 0, err
    row = pd.read_csv(out / "results.csv").iloc[0].to_dict()
    folder = out / ALL_SAMPLES / cell_id(row)
    names = sorted(p.name for p in folder.iterdir())
    assert names == [f"{i:06d}.png" for i in range(120)]
    png = torch.cat(list(open_samples(folder).batches(7)))
    npz = np.load(saved_run / ALL_SAMPLES / f"{cell_id(row)}.npz")["arr_0"]
    np.testing.assert_array_equal(png.permute(0, 2, 3, 1).numpy(), npz)  # same seed, same cell
    assert not list((out / ALL_SAMPLES).glob(".*"))  # no temporary folder left


def test_external_npz_and_folder_rows_sit_in_the_same_table(
    saved_run, mnist_root, tmp_path, capsys
):
    row = pd.read_csv(saved_run / "results.csv").iloc[0].to_dict()
    npz = tmp_path / "gen.npz"
    shutil.copy(saved_run / ALL_SAMPLES / f"{cell_id(row)}.npz", npz)
    folder = tmp_path / "imgs"
    folder.mkdir()
    from PIL import Image

    for i, img in enumerate(np.load(npz)["arr_0"]):
        Image.fromarray(img[..., 0]).save(folder / f"{i:04d}.png")
    out = tmp_path / "e"
    code, _, err = _eval(
        capsys, npz, folder, "--dataset", "mnist", "--data-root", mnist_root, "--out", out
    )
    assert code == 0, err
    rows = pd.read_csv(out / "results.csv")
    assert rows["model_id"].str.match(r"samples:(gen|imgs)-[0-9a-f]{8}$").all()
    assert rows["samples"].tolist() == [str(npz), str(folder)]
    assert (rows["solver"] == "external").all() and (rows["n_samples"] == 120).all()
    np.testing.assert_allclose(rows["fid"], row["fid"], rtol=1e-6)  # PNG loses nothing
    code, table, err = _run(["report", str(out), str(saved_run)], capsys)
    assert code == 0, err
    assert "external" in table and "euler" in table


@pytest.mark.parametrize("layout", ["pytorch-fid", "clean-fid", "adm", "rfbench"])
def test_statistics_readers_take_each_layout(layout, tmp_path):
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(50, 6))
    mu, sigma = statistics_of(feats)
    path = tmp_path / "s.npz"
    if layout == "pytorch-fid":  # np.savez(mu=, sigma=), float64
        np.savez(path, mu=mu, sigma=sigma)
    elif layout == "clean-fid":  # np.savez_compressed, as clean-fid writes its references
        np.savez_compressed(path, mu=mu.astype(np.float32), sigma=sigma.astype(np.float32))
    elif layout == "adm":  # ADM's reference batches: images and spatial statistics too
        images = rng.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
        np.savez(path, arr_0=images, mu=mu, sigma=sigma, mu_s=mu[:2], sigma_s=sigma[:2, :2])
    else:
        write_stats(
            path, feats, feature_extractor="x-1", dataset="d", split="test", data_sha256="ab"
        )
    stats = read_stats(path)
    tol = 1e-6 if layout == "clean-fid" else 0
    np.testing.assert_allclose(stats.mu, mu, rtol=tol, atol=tol)
    np.testing.assert_allclose(stats.sigma, sigma, rtol=tol, atol=tol)
    np.testing.assert_allclose(stats.sigma, np.cov(feats.T), rtol=1e-5)  # n - 1 normalised
    expected = {"pytorch-fid": "mu-sigma", "clean-fid": "mu-sigma"}.get(layout, layout)
    assert stats.layout == expected and stats.dim == 6
    assert stats.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    if layout == "rfbench":
        assert stats.meta == {
            "format": "rfbench-stats-v1",
            "feature_extractor": "x-1",
            "dataset": "d",
            "split": "test",
            "n": 50,
            "data_sha256": "ab",
        }


def test_stats_file_gives_the_fid_of_the_split_it_describes(
    saved_run, mnist_root, tmp_path, capsys
):
    stats = tmp_path / "new" / "folder" / "mnist-test.npz"  # its folder is made
    root = ["--data-root", mnist_root]
    code, out, err = _run(
        ["stats", "mnist", "--split", "test", "--out", str(stats), *map(str, root)], capsys
    )
    assert code == 0, err
    assert out.strip() == str(stats)
    s = read_stats(stats)
    assert s.meta["split"] == "test" and s.meta["n"] == 200 and s.dim == 128
    assert s.meta["feature_extractor"].startswith("classifier-")
    by_split = tmp_path / "split"
    by_stats = tmp_path / "stats"
    assert (
        _eval(capsys, saved_run, "--dataset", "mnist", "--split", "test", *root, "--out", by_split)[
            0
        ]
        == 0
    )
    code, _, err = _eval(
        capsys,
        saved_run,
        "--dataset",
        "mnist",
        "--reference-stats",
        stats,
        *root,
        "--out",
        by_stats,
    )
    assert code == 0, err
    a, b = pd.read_csv(by_split / "results.csv"), pd.read_csv(by_stats / "results.csv")
    np.testing.assert_allclose(b["fid"], a["fid"], rtol=1e-6)  # float64 against float32
    assert "kid_mean" not in b or b["kid_mean"].isna().all()  # statistics give FID only
    assert (b["reference"] == f"stats-{s.sha256}").all()  # the file's whole sha256
    assert (a["reference"].str.startswith("mnist-test-")).all()
    # the run itself takes the statistics too: the same FID as eval's against them
    out = tmp_path / "run"
    argv = _mnist_run(mnist_root, out, "--steps", "1", "--reference-stats", str(stats))
    code, _, err = _run(argv, capsys)
    assert code == 0, err
    assert "kid left out" in err
    row = pd.read_csv(out / "results.csv").iloc[0]
    assert row["reference"] == f"stats-{s.sha256}"
    first = b[b["steps"] == 1].iloc[0]
    assert row["fid"] == pytest.approx(first["fid"], rel=1e-6)


def test_npz_writer_streams_to_disk(tmp_path):
    """Each batch goes to the file as it comes: memory holds one batch, whatever n is."""
    w = NpzWriter(tmp_path / "a.npz", 1000, (3, 16, 16))
    sizes = []
    for _ in range(10):
        w.write(torch.randint(0, 256, (100, 3, 16, 16), dtype=torch.uint8))
        sizes.append(os.path.getsize(w.tmp))
    batch = 100 * 3 * 16 * 16
    assert all(b - a >= batch * 0.99 for a, b in zip(sizes, sizes[1:]))
    assert not (tmp_path / "a.npz").exists()  # not in place until the last sample is in
    w.close()
    assert np.load(tmp_path / "a.npz")["arr_0"].shape == (1000, 16, 16, 3)
    short = sample_writer("npz", tmp_path, "b", 10, (1, 4, 4))
    short.write(torch.zeros(4, 1, 4, 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match="4 samples written, 10 announced"):
        short.close()
    short.abort()
    assert list(tmp_path.iterdir()) == [tmp_path / "a.npz"]


def _bad_files(tmp_path):
    np.savez(tmp_path / "dim7.npz", mu=np.zeros(7), sigma=np.eye(7))
    (tmp_path / "corrupt.npz").write_bytes(b"PK\x03\x04 this is not a zip archive at all")
    np.savez(tmp_path / "float.npz", arr_0=np.zeros((4, 28, 28, 1), np.float32))
    np.savez(tmp_path / "nomu.npz", m=np.zeros(3))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    from PIL import Image

    Image.fromarray(np.zeros((28, 28), np.uint8)).save(mixed / "a.png")
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(mixed / "b.png")
    np.savez(tmp_path / "rgb32.npz", arr_0=np.zeros((4, 32, 32, 3), np.uint8))
    np.savez(tmp_path / "one.npz", arr_0=np.zeros((1, 28, 28, 1), np.uint8))
    (tmp_path / "garbage.pth").write_bytes(b"not a weights file")
    (tmp_path / "out-is-dir.npz").mkdir()


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["{run}", "--reference-stats", "{t}/dim7.npz"], "7-dimensional"),
        (["{run}", "--reference-stats", "{t}/corrupt.npz"], "not a readable .npz"),
        (["{run}", "--reference-stats", "{t}/nomu.npz"], "not mu and sigma"),
        (["{run}", "--reference-stats", "{t}/missing.npz"], "no such file"),
        (["{t}/corrupt.npz"], "not a readable .npz"),
        (["{t}/float.npz"], "takes uint8"),
        (["{t}/one.npz"], "FID needs at least 2"),
        (["{t}/empty"], "holds no images"),
        (["{t}/mixed"], "share one size"),
        (["{t}/rgb32.npz"], "the classifier extractor takes the dataset's shape"),
        (["{t}/nothing-here"], "no such file or folder"),
        (
            ["{run}", "--feature-extractor", "inception", "--inception-weights", "{t}/garbage.pth"],
            "garbage.pth",
        ),
        (["{run}", "--split", "test", "--reference-stats", "{t}/dim7.npz"], "replaces it"),
    ],
)
def test_bad_eval_input_is_one_line_and_writes_nothing(
    argv, needle, saved_run, mnist_root, tmp_path, capsys
):
    _bad_files(tmp_path)
    out = tmp_path / "out"
    argv = [a.format(run=saved_run, t=tmp_path) for a in argv]
    code, _, err = _eval(
        capsys, *argv, "--dataset", "mnist", "--data-root", mnist_root, "--out", out
    )
    assert code == 2
    lines = err.strip().splitlines()
    assert lines[-1].startswith("rfbench: error:") and needle in lines[-1], err
    assert "Traceback" not in err
    assert not out.exists()


def test_other_bad_inputs_are_one_line(saved_run, mnist_root, tmp_path, capsys):
    _bad_files(tmp_path)
    cases = [
        (["eval", str(saved_run)], "give --dataset"),
        (["stats", "mnist", "--out", str(tmp_path / "out-is-dir.npz")], "is a directory"),
        (["stats", "toy2d", "--out", str(tmp_path / "t.npz")], "toy2d"),
        (
            ["run", "--dataset", "toy2d", "--save-samples", "npz", "--out", str(tmp_path / "r")],
            "toy2d",
        ),
        (["run", "--dataset", "toy2d", "--reference-stats", str(tmp_path / "dim7.npz")], "toy2d"),
        (
            ["run", "--dataset", "mnist", "--metrics", "inversion", "--out", str(tmp_path / "r")]
            + ["--reference-stats", str(tmp_path / "dim7.npz")],
            "add fid to --metrics",
        ),
        (
            ["eval", str(saved_run), "--dataset", "mnist", "--out", str(saved_run)],
            "already holds a run",
        ),
    ]
    before = sorted(p.name for p in saved_run.iterdir())
    for argv, needle in cases:
        code, _, err = _run([*argv, "--data-root", str(mnist_root)], capsys)
        assert code == 2, (argv, err)
        assert needle in err.strip().splitlines()[-1], (argv, err)
    assert sorted(p.name for p in saved_run.iterdir()) == before  # nothing of it lost
    assert not (tmp_path / "r").exists()


def test_a_run_without_saved_samples_is_named(mnist_root, tmp_path, capsys):
    out = tmp_path / "plain"
    assert _run(_mnist_run(mnist_root, out, "--steps", "1"), capsys)[0] == 0
    code, _, err = _eval(capsys, out, "--dataset", "mnist", "--data-root", mnist_root)
    assert code == 2 and "--save-samples" in err


def test_eval_rows_say_what_was_scored(saved_run, mnist_root, tmp_path, capsys):
    """A run's saved cell with fewer images than its row, or a cell without saved samples,
    is refused; so is the same file twice, while two files of one name stay apart."""
    broken = tmp_path / "broken"
    shutil.copytree(saved_run, broken)
    cells = sorted((broken / ALL_SAMPLES).glob("*.npz"))
    arr = np.load(cells[0])["arr_0"]
    np.savez(cells[0], arr_0=arr[:100])
    root = ["--dataset", "mnist", "--data-root", mnist_root]
    code, _, err = _eval(capsys, broken, *root, "--out", tmp_path / "e1")
    assert code == 2 and "holds 100 images, but its cell made 120" in err
    cells[0].unlink()
    code, _, err = _eval(capsys, broken, *root, "--out", tmp_path / "e2")
    assert code == 2 and "lacks the saved samples of 1 successful cell(s)" in err
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    shutil.copy(cells[1], tmp_path / "a" / "s.npz")
    np.savez(tmp_path / "b" / "s.npz", arr_0=arr[:50])
    code, _, err = _eval(capsys, tmp_path / "a/s.npz", tmp_path / "a/s.npz", *root)
    assert code == 2 and "given twice" in err
    out = tmp_path / "e3"
    code, _, err = _eval(capsys, tmp_path / "a/s.npz", tmp_path / "b/s.npz", *root, "--out", out)
    assert code == 0, err
    rows = pd.read_csv(out / "results.csv")
    assert rows["model_id"].nunique() == 2 and list(rows["n_samples"]) == [120, 50]
    assert not (tmp_path / "e1").exists() and not (tmp_path / "e2").exists()


def test_image_modes(tmp_path):
    """8-bit grey, grey with alpha and grey palettes read as one channel; colour with alpha
    as three; 16-bit images are refused rather than clipped."""
    from PIL import Image

    grey = np.arange(28 * 28, dtype=np.uint8).reshape(28, 28)
    folder = tmp_path / "modes"
    folder.mkdir()
    Image.fromarray(grey).save(folder / "0.png")
    Image.fromarray(grey).convert("LA").save(folder / "1.png")
    Image.fromarray(grey).convert("P").save(folder / "2.png")  # PIL's grey palette
    source = open_samples(folder)
    assert source.shape == (1, 28, 28)
    images = torch.cat(list(source.batches(8)))
    for img in images:
        np.testing.assert_array_equal(img[0].numpy(), grey)
    rgba = tmp_path / "rgba"
    rgba.mkdir()
    Image.fromarray(np.stack([grey] * 3 + [grey], -1), "RGBA").save(rgba / "0.png")
    assert open_samples(rgba).shape == (3, 28, 28)
    deep = tmp_path / "deep"
    deep.mkdir()
    Image.fromarray(grey.astype(np.uint16) * 256).save(deep / "0.png")
    with pytest.raises(UserError, match="convert 16-bit or float images"):
        open_samples(deep)


def test_a_failing_set_leaves_no_half_written_output(saved_run, mnist_root, tmp_path, capsys):
    """Every header is read before scoring; a later image that cannot be decoded undoes
    the rows already written."""
    row = pd.read_csv(saved_run / "results.csv").iloc[0].to_dict()
    good = tmp_path / "good.npz"
    shutil.copy(saved_run / ALL_SAMPLES / f"{cell_id(row)}.npz", good)
    bad = tmp_path / "bad"
    bad.mkdir()
    from PIL import Image

    for i in range(6):
        Image.fromarray(np.zeros((28, 28), np.uint8)).save(bad / f"{i}.png")
    data = (bad / "5.png").read_bytes()
    (bad / "5.png").write_bytes(data[:41])  # its header, then nothing
    out = tmp_path / "out"
    code, _, err = _eval(
        capsys, good, bad, "--dataset", "mnist", "--data-root", mnist_root, "--out", out
    )
    assert code == 2 and err.strip().splitlines()[-1].startswith("rfbench: error: cannot read"), err
    assert not out.exists()


def test_stats_refuses_to_overwrite_and_statistics_need_fid(
    saved_run, mnist_root, tmp_path, capsys
):
    root = ["--data-root", str(mnist_root)]
    precious = tmp_path / "precious.npz"
    np.savez(precious, arr_0=np.zeros(3))
    code, _, err = _run(["stats", "mnist", "--out", str(precious), *root], capsys)
    assert code == 2 and "pass --force" in err
    assert "arr_0" in np.load(precious).files  # untouched
    assert _run(["stats", "mnist", "--out", str(precious), "--force", *root], capsys)[0] == 0
    assert "mu" in np.load(precious).files
    code, _, err = _eval(
        capsys,
        saved_run,
        "--dataset",
        "mnist",
        *root,
        "--reference-stats",
        precious,
        "--metrics",
        "kid",
    )
    assert code == 2 and "add fid to --metrics" in err
    run = _mnist_run(mnist_root, tmp_path / "r", "--reference-stats", str(precious))
    code, _, err = _run([*run, "--metrics", "kid"], capsys)
    assert code == 2 and "add fid to --metrics" in err
    code, _, err = _run([*run, "--reference", "test"], capsys)
    assert code == 2 and "--reference-stats replaces it" in err
    assert not (tmp_path / "r").exists()


def test_precision_recall_needs_more_than_its_neighbours(mnist_root, tmp_path, capsys):
    np.savez(tmp_path / "three.npz", arr_0=np.zeros((3, 28, 28, 1), np.uint8))
    code, _, err = _eval(
        capsys,
        tmp_path / "three.npz",
        "--dataset",
        "mnist",
        "--data-root",
        mnist_root,
        "--metrics",
        "prc",
    )
    assert code == 2 and "need more than 3" in err and "Traceback" not in err


def test_a_covariance_that_is_not_one_is_refused(tmp_path):
    np.savez(tmp_path / "neg.npz", mu=np.zeros(4), sigma=-np.eye(4))
    with pytest.raises(UserError, match="negative eigenvalue"):
        read_stats(tmp_path / "neg.npz")
    asym = np.eye(4)
    asym[0, 1] = 0.5
    np.savez(tmp_path / "asym.npz", mu=np.zeros(4), sigma=asym)
    with pytest.raises(UserError, match="not symmetric"):
        read_stats(tmp_path / "asym.npz")
