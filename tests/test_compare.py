"""rfbench compare: regressions caught, improvements and noise passed, thresholds exact at
their boundaries, missing and new cells reported, bad input exit 2, and the same-job mode
catching an injected slowdown."""

from __future__ import annotations

import json
import time

import pandas as pd
import pytest

from rfbench.cli import main
from rfbench.compare import Threshold, compare, to_markdown
from rfbench.errors import UserError
from rfbench.results import records_to_frame


def _frame(fid=(100.0,), nfe=8.0, time_s=1.0, seeds=None, model="m", extra=()) -> pd.DataFrame:
    """euler 8 steps, one row per seed with the given FIDs; plus ``extra`` rows."""
    seeds = seeds if seeds is not None else range(len(fid))
    rows = [
        dict(
            dataset="d",
            model_id=model,
            solver="euler",
            family="fixed",
            steps=8,
            grid="uniform",
            stepping="batched",
            seed=s,
            nfe=nfe,
            fid=f,
            wall_time_s=time_s,
            status="ok",
        )
        for s, f in zip(seeds, fid)
    ]
    return records_to_frame(rows + list(extra))


def _regressed(verdict) -> set[str]:
    return {r["metric"] for r in verdict["regressions"]}


def test_regression_caught_and_improvement_passes():
    base = _frame(fid=(100.0,))
    assert _regressed(compare(base, _frame(fid=(106.0,)))) == {"fid"}
    better = compare(base, _frame(fid=(80.0,)))
    assert better["ok"] and [r["metric"] for r in better["improvements"]] == ["fid"]
    assert _regressed(compare(base, _frame(nfe=9.0))) == {"nfe"}
    assert _regressed(compare(base, _frame(time_s=1.3))) == {"time"}
    assert compare(base, base)["ok"]


def test_thresholds_hold_at_their_boundaries():
    base = _frame(fid=(100.0,), time_s=2.0)
    assert compare(base, _frame(fid=(105.0,), time_s=2.5))["ok"]  # exactly +5%, +25%
    assert _regressed(compare(base, _frame(fid=(105.001,), time_s=2.5))) == {"fid"}
    absolute = {"fid": Threshold.parse("2.5")}
    assert compare(base, _frame(fid=(102.5,), time_s=2.0), absolute)["ok"]
    assert not compare(base, _frame(fid=(102.6,), time_s=2.0), absolute)["ok"]
    assert compare(base, _frame(nfe=9.0), {"nfe": Threshold.parse("off")})["ok"]
    assert Threshold.parse("5%") == Threshold(0.05, True) and Threshold.parse("off") is None
    for bad in ("-1", "five", "5%%", "", "1e999"):
        with pytest.raises(UserError, match="threshold"):
            Threshold.parse(bad)


def test_seed_noise_is_not_a_regression_but_a_consistent_shift_is():
    base = _frame(fid=(100.0, 110.0, 90.0, 105.0))
    noisy = _frame(fid=(112.0, 101.0, 99.0, 108.0))  # +2.5 on average, spread +-10
    verdict = compare(base, noisy, {"fid": Threshold.parse("1")})
    assert verdict["ok"] and verdict["checks"][0]["noise_se"] > 1
    shifted = _frame(fid=(106.0, 116.0, 96.0, 111.0))  # +6 on every seed
    assert _regressed(compare(base, shifted, {"fid": Threshold.parse("1")})) == {"fid"}


def test_missing_new_and_failed_cells_are_reported():
    base = _frame(fid=(100.0, 101.0))
    cur = _frame(
        fid=(100.0,),
        seeds=[0],
        extra=[
            dict(
                dataset="d",
                model_id="m",
                solver="rk45",
                family="scipy",
                rtol=1e-3,
                atol=1e-3,
                stepping="batched",
                seed=0,
                nfe=30,
                fid=90.0,
                status="ok",
            ),
        ],
    )
    verdict = compare(base, cur)
    assert verdict["ok"]
    assert [c["seed"] for c in verdict["missing"]] == ["1"]
    assert [c["solver"] for c in verdict["new"]] == ["rk45"]
    failed = _frame(fid=(float("nan"),))
    failed["status"], failed["error"] = "failed", "FloatingPointError: NaN"
    verdict = compare(_frame(), failed)
    assert _regressed(verdict) == {"status"} and "NaN" in verdict["regressions"][0]["error"]


def test_models_differ_only_with_any_model():
    base, cur = _frame(model="a"), _frame(model="b", fid=(150.0,))
    verdict = compare(base, cur)
    assert len(verdict["missing"]) == 1 and len(verdict["new"]) == 1
    assert _regressed(verdict) == {"nothing compared"}  # a gate that compared nothing fails
    assert _regressed(compare(base, cur, any_model=True)) == {"fid"}


def test_cli_exit_codes_and_outputs(tmp_path, capsys):
    base, cur = tmp_path / "base.csv", tmp_path / "cur.csv"
    _frame(fid=(100.0,)).to_csv(base, index=False)
    _frame(fid=(120.0,)).to_csv(cur, index=False)
    out_json, out_md = tmp_path / "v.json", tmp_path / "v.md"
    code = main(
        ["compare", str(base), str(cur), "--json", str(out_json), "--markdown", str(out_md)]
    )
    stdout = capsys.readouterr().out
    assert code == 1 and "REGRESSION" in stdout and "| fid " in stdout
    verdict = json.loads(out_json.read_text())
    assert verdict["ok"] is False and verdict["regressions"][0]["change"] == pytest.approx(20)
    assert out_md.read_text() == stdout
    assert main(["compare", str(base), str(cur), "--max-fid-increase", "25%"]) == 0
    assert "no regression" in capsys.readouterr().out
    assert main(["compare", str(base), str(tmp_path / "nothing")]) == 2
    assert "no results.csv" in capsys.readouterr().err
    assert main(["compare", str(base), str(cur), "--max-fid-increase", "lots"]) == 2
    assert "threshold 'lots'" in capsys.readouterr().err
    assert main(["compare", str(base)]) == 2  # one model: nothing to compare within
    assert "exactly two models" in capsys.readouterr().err


def test_same_job_mode_catches_an_injected_slowdown(tmp_path):
    """Two models evaluated cell by cell in one run: an unchanged copy passes, a copy
    that sleeps 100 ms in every network call fails on time, with NFE and quality equal."""
    from dataclasses import replace

    import torch
    from torch import nn

    from rfbench import candidates, runner
    from rfbench.compare import within_run
    from rfbench.config import RunConfig
    from rfbench.data import load_split
    from rfbench.metrics.quality import build_quality
    from rfbench.solvers import Setting
    from rfbench.train import train

    data = load_split("toy2d")
    trained = train(candidates.model_spec("toy2d", "quick", data, 0, 1), data, progress=False)

    class Sleepy(nn.Module):
        def __init__(self, delay: float):
            super().__init__()
            self.net, self.delay = trained.model, delay
            self.tag = nn.Parameter(torch.tensor(delay), requires_grad=False)  # its own id

        def forward(self, x, t):
            if self.delay >= 1e-3:  # a sleep of any length yields the CPU: only a real delay
                time.sleep(self.delay)
            return self.net(x, t)

    cpu = torch.device("cpu")
    cfg = RunConfig(dataset="toy2d", solvers=("euler",), repeats=5)
    grid = runner.GridContext(
        cfg, build_quality("toy2d", data, data, (), cpu, 1000), 1000, 1000, cpu, progress=False
    )

    def one_run(candidate_delay: float) -> pd.DataFrame:
        models = [
            candidates.Candidate.of(replace(trained, model=Sleepy(delay)))
            for delay in (0.0, candidate_delay + 1e-9)
        ]
        rows = []
        for steps in (8, 16):
            cell = runner.Cell(Setting("euler", steps=steps), seed=0)
            for m in models:  # alternating, as run does
                rows.append(runner.run_cell(cell, m, grid))
        return records_to_frame(rows)

    # A 100 ms sleep per call multiplies a cell's time by more than ten; a loaded shared
    # machine can swing an unchanged cell's median of five by far more than tens of percent,
    # so this gate allows +300%. One intra-op thread: with two, while another process held
    # both cores, each tiny forward waited on its threads' barrier for tens of ms, and the
    # unchanged model's 8 steps took as long as 8 sleeps.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for delay, ok in ((0.0, True), (0.1, False)):
            base, cur = within_run(one_run(delay))
            verdict = compare(base, cur, {"time": Threshold.parse("300%")}, any_model=True)
            assert verdict["ok"] is ok, verdict["regressions"]
            assert _regressed(verdict) == (set() if ok else {"time"})
    finally:
        torch.set_num_threads(threads)


def test_the_ci_gate_baseline_is_there_and_a_missing_cell_fails(tmp_path, capsys):
    from pathlib import Path

    baseline = Path(__file__).parents[1] / "benchmarks" / "baselines" / "toy2d"
    frame = pd.read_csv(baseline / "results.csv")
    assert len(frame) == 10 and (frame["status"] == "ok").all()  # what ci_gate.sh checks
    cut = tmp_path / "cut.csv"
    frame.iloc[1:].to_csv(cut, index=False)
    assert main(["compare", str(baseline), str(cut)]) == 0  # reported, not failed
    assert main(["compare", str(baseline), str(cut), "--fail-on-missing"]) == 1
    assert "| missing " in capsys.readouterr().out
    worse = frame.assign(swd=frame["swd"] * 1.03)
    worse.to_csv(tmp_path / "worse.csv", index=False)
    assert (
        main(
            [
                "compare",
                str(baseline),
                str(tmp_path / "worse.csv"),
                "--max-swd-increase",
                "2%",
                "--max-time-increase",
                "off",
            ]
        )
        == 1
    )


def test_json_is_strict():
    from rfbench.compare import to_json

    text = to_json({"x": float("nan"), "y": [float("inf"), 1.0]})
    assert json.loads(text) == {"x": None, "y": [None, 1.0]} and "NaN" not in text


def test_nfe_is_exact_so_a_zero_threshold_means_no_growth():
    """38, 38 -> 38, 48 over two seeds: the noise allowance of 2 SE (here 10) must not
    apply to a deterministic count; neither may a mean that hides one seed's growth."""
    base = _frame(fid=(100.0, 100.0), nfe=38.0)
    grown = _frame(fid=(100.0, 100.0), nfe=38.0)
    grown.loc[1, "nfe"] = 48.0
    verdict = compare(base, grown)
    assert _regressed(verdict) == {"nfe"}
    assert verdict["regressions"][0]["worst_seed_change"] == 10.0
    assert verdict["regressions"][0]["allowed"] == 0.0
    swapped = _frame(fid=(100.0, 100.0), nfe=38.0)
    swapped["nfe"] = [48.0, 28.0]  # mean unchanged, one seed grew
    assert _regressed(compare(base, swapped)) == {"nfe"}
    assert compare(base, swapped, {"nfe": Threshold.parse("10")})["ok"]


@pytest.mark.parametrize("lost", ["nan", "column"])
def test_a_metric_lost_in_the_current_run_is_a_regression(lost):
    base = _frame(fid=(100.0, 101.0))
    cur = _frame(fid=(float("nan"), float("nan")))
    if lost == "column":
        cur = cur.drop(columns="fid")
    verdict = compare(base, cur)
    assert _regressed(verdict) == {"fid"} and len(verdict["regressions"]) == 2
    assert verdict["regressions"][0]["current"] is None


def test_a_run_without_features_loses_fid_rather_than_differing():
    """An inversion-only current run names no extractor: its missing FID is a regression
    ("missing"), not a protocol difference."""
    base = _frame(fid=(100.0,)).assign(feature_extractor="classifier-8766791e", reference="r")
    cur = _frame(fid=(float("nan"),)).assign(feature_extractor=None, reference=None)
    verdict = compare(base, cur)
    assert not verdict["incomparable"] and _regressed(verdict) == {"fid"}
    assert verdict["regressions"][0]["error"] == "fid is missing or NaN"


def test_different_extractors_are_not_comparable():
    base = _frame(fid=(100.0,)).assign(feature_extractor="classifier-8766791e", reference="r")
    cur = _frame(fid=(100.0,)).assign(feature_extractor="classifier-7ffdd57a", reference="r")
    verdict = compare(base, cur)
    assert not verdict["ok"] and not verdict["regressions"]
    (row,) = verdict["incomparable"]
    assert row["feature_extractor_baseline"] == "classifier-8766791e"
    assert row["feature_extractor_current"] == "classifier-7ffdd57a"
    assert "NOT COMPARABLE" in to_markdown(verdict)
    assert not compare(base, base.assign(n_samples=500))["ok"]
    assert compare(base, base)["ok"]


def test_nfe_and_time_compare_only_at_the_same_batch_size():
    """A batched adaptive solver's NFE depends on its batch: a run at another batch size is
    not comparable on NFE or time, though its quality still is."""
    base = _frame(fid=(100.0,)).assign(batch_size=250, n_samples=1000, device="cpu")
    smaller = base.assign(batch_size=10, nfe=7.0, wall_time_s=3.0)
    verdict = compare(base, smaller)
    assert not verdict["ok"] and not verdict["regressions"]
    assert {r["metric"] for r in verdict["incomparable"]} == {"nfe", "time"}
    assert {c["metric"] for c in verdict["checks"]} == {"fid"}
    other_device = base.assign(device="cuda:0 (H200)", wall_time_s=0.1)
    assert {r["metric"] for r in compare(base, other_device)["incomparable"]} == {"time"}


def test_malformed_inputs_end_in_one_line(tmp_path, capsys):
    base = tmp_path / "base.csv"
    _frame(fid=(100.0,)).to_csv(base, index=False)
    no_grid = tmp_path / "no_grid.csv"
    _frame(fid=(100.0,)).drop(columns="grid").to_csv(no_grid, index=False)
    capsys.readouterr()
    assert main(["compare", str(base), str(no_grid)]) == 2
    err = capsys.readouterr().err
    assert "the current has no grid column" in err and len(err.splitlines()) == 1
    header_only = tmp_path / "header.csv"
    _frame(fid=(100.0,)).iloc[:0].to_csv(header_only, index=False)
    assert main(["compare", str(base), str(header_only)]) == 1  # nothing compared
    assert "nothing compared" in capsys.readouterr().out
    words = tmp_path / "words.csv"
    _frame(fid=(100.0, 100.0)).assign(nfe=["8", "many"]).to_csv(words, index=False)
    capsys.readouterr()
    assert main(["compare", str(base), str(words)]) == 2
    err = capsys.readouterr().err
    assert "column nfe" in err and "'many' is not a number" in err and len(err.splitlines()) == 1


def test_the_summary_counts_regressed_checks_apart_from_passed_ones():
    base = _frame(fid=(100.0, 101.0), nfe=38.0)
    grown = base.copy()
    grown["nfe"] = 48.0  # one regressed check (nfe), the other (fid) passes
    verdict = compare(base, grown)
    checks = len(verdict["checks"])
    assert checks >= 2 and len(verdict["regressions"]) == 1
    text = to_markdown(verdict)
    assert f"{checks - 1} of {checks} checks passed or improved, 1 regressed" in text
    assert f"{checks} of {checks} checks passed" in to_markdown(compare(base, base))
