"""Hypothesis fuzzing of the command line's list and number parsing: any text either parses
to valid values or ends in one line and exit code 2; never a traceback. What parses goes on
to the run's configuration and plan (everything a run checks before it writes), and each
planned cell's noise and time grid are drawn: a value that passes parsing must work."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rfbench.cli import build_parser, run_config
from rfbench.compare import Threshold
from rfbench.errors import UserError
from rfbench.runner import plan
from rfbench.sample import noise
from rfbench.solvers import time_grid

PARSER = build_parser()
TOKENS = [*"0123456789,.-+eE%abcxyz _\t", "inf", "nan", "1e999", "euler", "rk45", "uniform"]
TEXT = st.lists(st.sampled_from(TOKENS), max_size=12).map("".join) | st.text(max_size=12)
FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

OPTIONS = {
    "--steps": lambda v: all(isinstance(s, int) and s > 0 for s in v),
    "--tols": lambda v: all(s > 0 for s in v),
    "--seeds": lambda v: all(isinstance(s, int) and 0 <= s < 2**63 for s in v),
    "--train-seed": lambda v: isinstance(v, int) and 0 <= v < 2**63,
    "--solvers": lambda v: len(v) >= 1,
    "--grids": lambda v: len(v) >= 1,
    "--num-samples": lambda v: isinstance(v, int) and v > 0,
    "--repeats": lambda v: isinstance(v, int) and v > 0,
    "--checkpoint": lambda v: len(v) >= 1,
}


def _parse(argv, capsys):
    """(namespace, None) or (None, stderr) after argparse's exit 2."""
    try:
        return PARSER.parse_args(argv), None
    except SystemExit as e:
        assert e.code == 2
        return None, capsys.readouterr().err


@pytest.mark.parametrize("option", sorted(OPTIONS))
@FUZZ
@given(text=TEXT)
def test_run_options_parse_or_fail_in_one_line(option, text, capsys):
    args, err = _parse(["run", "--dataset", "toy2d", f"{option}={text}"], capsys)
    if args is None:
        assert err.count("\n") == 1 and "Traceback" not in err and err.startswith("rfbench")
        return
    value = getattr(args, option[2:].replace("-", "_"))
    assert OPTIONS[option](value), (option, text, value)
    if isinstance(value, tuple):
        assert len(set(value)) == len(value)  # repeats are refused
    _plan_and_draw(args)


def _plan_and_draw(args) -> None:
    """Past parsing: the config and the plan hold, or fail with one UserError line; every
    planned cell's noise and time grid can be made."""
    try:
        cells = plan(run_config(args))[1]
    except UserError as e:
        assert "\n" not in str(e)
        return
    for cell in cells:
        assert noise(cell.seed, [0, 1], (2,)).shape == (2, 2)
        if cell.setting.steps is not None:
            ts = time_grid(cell.setting.steps, grid=cell.setting.grid)
            assert ts[0] == 0 and ts[-1] == 1


@pytest.mark.parametrize("seeds", ["-1", "0,-3", "9223372036854775808", "1180591620717411303424"])
def test_out_of_range_seeds_fail_in_one_line(seeds, capsys):
    for option in ("--seeds", "--train-seed") if "," not in seeds else ("--seeds",):
        args, err = _parse(["run", "--dataset", "toy2d", f"{option}={seeds}"], capsys)
        assert args is None and "2**63" in err and err.count("\n") == 1


@FUZZ
@given(text=TEXT)
def test_tolerances_are_finite_and_positive(text, capsys):
    args, _ = _parse(["run", "--dataset", "toy2d", f"--tols={text}"], capsys)
    if args is not None:
        assert all(t > 0 and math.isfinite(t) for t in args.tols), (text, args.tols)


@FUZZ
@given(text=TEXT)
def test_report_budgets_parse_or_fail_in_one_line(text, capsys):
    for option in ("--nfe-budget", "--time-budget"):
        args, err = _parse(["report", "somewhere", f"{option}={text}"], capsys)
        if args is None:
            assert err.count("\n") == 1 and "Traceback" not in err
        else:
            assert all(v > 0 for v in getattr(args, option[2:].replace("-", "_")))


@FUZZ
@given(text=TEXT)
def test_compare_thresholds_parse_or_raise_user_error(text):
    try:
        t = Threshold.parse(text)
    except UserError as e:
        assert "\n" not in str(e)
        return
    assert t is None or (t.value >= 0 and math.isfinite(t.value))
