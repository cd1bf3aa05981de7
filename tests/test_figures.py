"""Figures from a run directory: every file in every format, byte-identical on a rerun."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from rfbench.figures import (
    FORMATS,
    NoDataError,
    make_all,
    pareto_front,
    quality_vs_nfe,
    sample_grid,
    setting_means,
)
from rfbench.results import cell_id, records_to_frame

FIGURES = ("fid_vs_nfe", "fid_vs_time", "straightness_vs_nfe", "samples", "trajectories")


def _rows() -> list[dict]:
    """euler at 1, 2, 4, 8 steps and rk45 at two tolerances, 2 seeds; one failed row."""
    common = dict(dataset="toyset", model_id="m", n_samples=64, status="ok")
    common.update(feature_extractor="classifier-abc", batch_size=64)
    rows = []
    for seed in (0, 1):
        for steps in (1, 2, 4, 8):
            rows.append(
                dict(
                    common,
                    solver="euler",
                    family="fixed",
                    steps=steps,
                    grid="uniform",
                    stepping="batched",
                    seed=seed,
                    nfe=steps,
                    fid=100 / steps + seed,
                    wall_time_s=0.1 * steps,
                    straightness=0.1 / steps,
                    curvature=0.01 * steps,
                )
            )
        for rtol, nfe in ((1e-3, 20), (1e-5, 50)):
            rows.append(
                dict(
                    common,
                    solver="rk45",
                    family="scipy",
                    rtol=rtol,
                    atol=rtol,
                    stepping="batched",
                    seed=seed,
                    nfe=nfe + seed,
                    fid=8 - nfe / 10 + seed,
                    wall_time_s=0.12 * nfe,
                    straightness=0.01,
                    curvature=0.02,
                )
            )
    rows.append(dict(rows[0], seed=2, status="failed", fid=None, error="boom"))
    return rows


def _run_dir(tmp_path, samples=True, straightness=True):
    """A run directory: results.csv, and arrays named by cell_id for seed 0."""
    rows = _rows()
    frame = records_to_frame(rows)
    if not straightness:
        frame[["straightness", "curvature"]] = np.nan
    frame.to_csv(tmp_path / "results.csv", index=False)
    rng = np.random.default_rng(0)
    for row in rows:
        if row["seed"] != 0 or row["status"] != "ok":
            continue
        if samples:
            (tmp_path / "samples").mkdir(exist_ok=True)
            x = rng.integers(0, 256, (16, 1, 8, 8), dtype=np.uint8)
            np.savez(tmp_path / "samples" / f"{cell_id(row)}.npz", x=x)
        (tmp_path / "trajectories").mkdir(exist_ok=True)
        t = np.linspace(0, 1, 5)
        x0 = rng.standard_normal((8, 2))
        x = np.stack([(1 - s) * x0 + s * np.sign(x0) for s in t]).astype(np.float32)
        np.savez(tmp_path / "trajectories" / f"{cell_id(row)}.npz", t=t, x=x)
    return tmp_path


def test_make_all_writes_every_figure_identically(tmp_path):
    run = _run_dir(tmp_path)
    paths = make_all(run)
    expected = {run / "figures" / f"{n}.{f}" for n in FIGURES for f in FORMATS}
    assert set(paths) == expected
    first = {p: p.read_bytes() for p in paths}
    assert all(len(b) > 1000 for b in first.values())
    assert make_all(run) == paths
    changed = [p.name for p in paths if p.read_bytes() != first[p]]
    assert not changed, f"not byte-identical on a rerun: {changed}"


def test_make_all_skips_figures_without_data(tmp_path):
    run = _run_dir(tmp_path, samples=False, straightness=False)
    out = tmp_path / "elsewhere"
    paths = make_all(run, formats=("png",), width="double", out=out)
    assert paths == [out / "fid_vs_nfe.png", out / "fid_vs_time.png", out / "trajectories.png"]
    assert not (run / "figures").exists()


def test_seed_means_ignore_failed_rows():
    means = setting_means(records_to_frame(_rows()), "fid").set_index(["solver", "nfe"])
    assert len(means) == 6
    assert means.loc[("euler", 1), "mean"] == pytest.approx(100.5)  # seeds 0 and 1 only
    assert means.loc[("euler", 1), "std"] == pytest.approx(np.std([100, 101], ddof=1))
    assert means.loc[("rk45", 20.5), "seeds"] == 2


def test_pareto_front():
    times = [1.0, 2.0, 3.0, 4.0, 2.0, 5.0, np.nan]
    values = [9.0, 5.0, 6.0, 4.0, 7.0, 4.0, 1.0]
    # 3.0 is beaten by the faster 2.0 (5 < 6); 2.0 with 7 ties in time with a better point;
    # 5.0 only equals the faster 4.0; a point without a time is never on the front.
    expected = [True, True, False, True, False, False, False]
    assert pareto_front(times, values).tolist() == expected
    assert pareto_front([], []).tolist() == []


def test_no_data_raises(tmp_path):
    failed = records_to_frame([dict(r, status="failed") for r in _rows()])
    with pytest.raises(ValueError, match="no successful rows"):
        quality_vs_nfe(failed, tmp_path / "q", formats=("png",))
    frame = records_to_frame(_rows())
    with pytest.raises(NoDataError, match="no saved samples"):
        sample_grid(frame, tmp_path, tmp_path / "s")
    (tmp_path / "samples").mkdir()  # toy2d saves points, not images
    np.savez(tmp_path / "samples" / f"{cell_id(_rows()[0])}.npz", x=np.zeros((8, 2), np.float32))
    with pytest.raises(NoDataError, match="holds no images"):
        sample_grid(frame, tmp_path, tmp_path / "s")
    with pytest.raises(NoDataError, match="no results.csv"):
        make_all(tmp_path)
    failed.to_csv(tmp_path / "results.csv", index=False)
    with pytest.raises(NoDataError, match="no figure to draw"):
        make_all(tmp_path)


def test_single_file_path_as_bench_calls_it(tmp_path):
    path = tmp_path / "figures" / "fid_vs_nfe.png"
    assert quality_vs_nfe(records_to_frame(_rows()), path) == [path]
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_models_are_told_apart_by_their_short_names():
    import pandas as pd

    from rfbench.figures import _labels

    rows = pd.DataFrame(
        {
            "solver": ["euler"] * 3,
            "grid": "uniform",
            "stepping": "batched",
            "model_id": [
                "toy2d-quick-1a2b3c4d",
                "toy2d-quick-2rf-9f8e7d6c",
                "toy2d-quick-2rf-d1-5e",
            ],
        }
    )
    assert _labels(rows).tolist() == [
        "euler (1a2b3c4d)",
        "euler (2rf-9f8e7d6c)",
        "euler (2rf-d1-5e)",
    ]


def test_several_runs_are_drawn_as_one(tmp_path, capsys):
    """Two runs holding different cells give the figures of one run holding both: the same
    bytes, with sample and trajectory panels read from each cell's own run."""
    (tmp_path / "whole").mkdir()
    whole = _run_dir(tmp_path / "whole")
    parts = [tmp_path / "euler", tmp_path / "rk45"]
    frame = records_to_frame(_rows())
    ids = frame.apply(lambda r: cell_id(r.to_dict()), axis=1)
    for part, solver in zip(parts, ("euler", "rk45")):
        frame[frame["solver"] == solver].to_csv(part.mkdir() or part / "results.csv", index=False)
        for folder in ("samples", "trajectories"):
            (part / folder).mkdir()
            for f in (whole / folder).glob("*.npz"):
                if (frame.loc[ids == f.stem, "solver"] == solver).any():
                    (part / folder / f.name).write_bytes(f.read_bytes())
    one = make_all(whole, formats=("svg",), out=tmp_path / "one")
    two = make_all(parts, formats=("svg",), out=tmp_path / "two")
    assert [p.name for p in two] == [p.name for p in one] and len(one) == len(FIGURES)
    for a, b in zip(one, two):
        assert a.read_bytes() == b.read_bytes(), a.name
    with pytest.raises(NoDataError, match="need a directory"):
        make_all(parts)
    from rfbench.cli import main

    assert main(["figures", *map(str, parts)]) == 2
    assert "(--out)" in capsys.readouterr().err
    assert main(["figures", *map(str, parts), "--format", "png", "--out", str(tmp_path / "c")]) == 0
    assert (tmp_path / "c" / "samples.png").exists()
    with pytest.raises(NoDataError, match="more than one of"):
        make_all([whole, parts[0]], out=tmp_path / "three")
    # runs scored on other sample counts share no axis; an empty table is one line
    other = pd.read_csv(parts[1] / "results.csv").assign(n_samples=128)
    other.to_csv(parts[1] / "results.csv", index=False)
    with pytest.raises(NoDataError, match="differ in n_samples"):
        make_all(parts, out=tmp_path / "four")
    (parts[1] / "results.csv").write_text("")
    with pytest.raises(NoDataError, match="not a results table"):
        make_all(parts, out=tmp_path / "five")


def test_solvers_past_the_palette_still_look_apart():
    """rfbench's 23 solvers in one figure, 8 colours: no two share colour and marker fill,
    and the lines carry those styles."""
    from rfbench.figures import PALETTE, _lines, solver_styles
    from rfbench.solvers import SOLVERS

    names = sorted(SOLVERS)
    assert len(names) > 2 * len(PALETTE)  # the third fill is needed
    styles = solver_styles(pd.DataFrame({"solver": names}))
    looks = {(s["color"], s["fillstyle"]) for s in styles.values()}
    assert len(looks) == len(names)
    first, ninth = names[0], names[len(PALETTE)]
    assert styles[first]["color"] == styles[ninth]["color"]
    assert (styles[first]["fillstyle"], styles[ninth]["fillstyle"]) == ("full", "none")
    points = pd.DataFrame({"solver": names, "label": names, "nfe": 1.0})
    drawn = {label: style for label, style, _ in _lines(points, styles)}
    for name in names:
        assert {k: drawn[name][k] for k in styles[name]} == styles[name]


def test_fid_label_names_the_extractor_on_its_own_line():
    from rfbench.figures import _quality_label

    frame = pd.DataFrame({"feature_extractor": ["classifier-426cd998"]})
    assert _quality_label(frame, "fid") == "FID\n(classifier-426cd998)"
    assert _quality_label(frame, "swd") == "sliced Wasserstein-2"
