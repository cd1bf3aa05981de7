"""A solve's Setting: checked once when made, one label for people, one key for identity."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from rfbench.errors import UserError
from rfbench.solvers import LABEL_PARTS, InvalidSetting, Setting


def test_fixed_step_settings_are_normalised_and_checked():
    s = Setting("euler", steps=4)
    assert (s.steps, s.grid, s.rtol, s.atol, s.stepping) == (4, "uniform", None, None, "batched")
    assert Setting("heun", steps=4.0).steps == 4 and isinstance(
        Setting("heun", steps=4.0).steps, int
    )
    for bad, needle in (
        (dict(), "needs steps"),
        (dict(steps=0), ">= 1"),
        (dict(steps=2.5), ">= 1"),
        (dict(steps=True), ">= 1"),
        (dict(steps=2, rtol=1e-3), "not tolerances"),
        (dict(steps=2, grid="wavy"), "choose from: uniform"),
    ):
        with pytest.raises(InvalidSetting, match=needle):
            Setting("euler", **bad)


def test_adaptive_settings_are_normalised_and_checked():
    s = Setting("rk45", rtol=1e-3)
    assert (s.steps, s.grid, s.rtol, s.atol, s.stepping) == (None, None, 1e-3, 1e-3, "batched")
    assert Setting("dopri5", rtol=1e-3, grid="uniform").grid is None  # old manifests say so
    for bad, needle in (
        (dict(), "needs rtol"),
        (dict(rtol=0), "> 0"),
        (dict(rtol=math.inf), "> 0"),
        (dict(rtol=1e-3, atol=-1), "> 0"),
        (dict(rtol=1e-3, steps=4), "not steps"),
        (dict(rtol=1e-3, grid="cosine"), "fixed-step"),
        (dict(rtol=1e-3, stepping="sometimes"), "stepping"),
    ):
        with pytest.raises(InvalidSetting, match=needle):
            Setting("rk45", **bad)
    with pytest.raises(UserError, match="choose from: euler"):
        Setting("ddim", steps=1)


def test_an_invalid_setting_is_both_a_user_error_and_a_value_error():
    with pytest.raises(UserError):
        Setting("euler")
    with pytest.raises(ValueError):
        Setting("euler")


def test_labels_show_what_a_table_asks_for():
    assert Setting("euler", steps=1).label() == "1 step"
    assert Setting("euler", steps=4, grid="cosine").label() == "4 steps"
    assert Setting("euler", steps=4, grid="cosine").label(("grid",)) == "4 steps cosine"
    s = Setting("rk45", rtol=1e-5, atol=1e-6, stepping="per-sample")
    assert s.label() == "rtol 1e-05"
    assert s.label(LABEL_PARTS) == "rtol 1e-05 atol 1e-06 per-sample"


def test_the_key_is_the_same_for_a_row_read_back_from_csv(tmp_path):
    """A fixed-step row read back from CSV (steps as a float, no atol, NaN elsewhere) and
    the setting that wrote it have one key; the file names of saved samples keep theirs."""
    s = Setting("rk4", steps=8, grid="cosine")
    row = {**s.columns(), "seed": 0}
    pd.DataFrame([row]).to_csv(tmp_path / "r.csv", index=False)
    back = pd.read_csv(tmp_path / "r.csv").iloc[0].to_dict()
    assert isinstance(back["steps"], int | float) and math.isnan(back["rtol"])
    assert (
        Setting.from_row(back).key()
        == s.key()
        == ("rk4", 8, "cosine", None, None, None, "batched", 0.0, 1.0)
    )
    assert s.slug() == "steps8-cosine"
    assert Setting("rk45", rtol=1e-5).slug() == "rtol1e-05-atol1e-05-batched"
    assert Setting("rk4", steps=16).lineage_text() == "steps=16"
    assert Setting("rk45", rtol=1e-3).lineage_text() == "rtol=0.001 atol=0.001"


def test_settings_from_command_options():
    assert Setting.from_options("euler", 4, 1e-3) == Setting("euler", steps=4)
    assert Setting.from_options("rk45", None, 1e-3) == Setting("rk45", rtol=1e-3)
    with pytest.raises(InvalidSetting, match="give --steps"):
        Setting.from_options("euler", None, 1e-3)


def test_settings_are_hashable_and_equal_by_value():
    assert len({Setting("euler", steps=4), Setting("euler", steps=4, grid="uniform")}) == 1


def test_options_a_solver_does_not_take_are_refused_and_declared_ones_round_trip(monkeypatch):
    """An option no solver reads would be ignored while still splitting cells apart (or,
    dropped by from_row, merging them): Setting takes only the options its solver declares,
    and a results row gives them back."""
    import dataclasses

    from rfbench.solvers import base

    with pytest.raises(InvalidSetting, match="takes no option foo"):
        Setting("euler", steps=4, options=(("foo", 1),))
    spec = dataclasses.replace(base.SOLVERS["euler"], options=("shift",))
    monkeypatch.setitem(base.SOLVERS, "euler", spec)
    s = Setting("euler", steps=4, options=(("shift", 3.0),))
    assert Setting.from_row(s.columns()) == s
    assert s.key() != Setting("euler", steps=4).key()


@pytest.mark.parametrize(
    "setting",
    [
        Setting("euler", steps=4),
        Setting("heun", steps=2, grid="cosine"),
        Setting("rk45", rtol=1e-3, atol=1e-6),
        Setting("dopri5", rtol=1e-5, stepping="per-sample"),
    ],
)
def test_the_key_columns_hold_the_key(setting):
    """results, compare and report identify a setting by KEY_COLUMNS: they must be the
    columns of Setting.key(), in its order."""
    from rfbench.solvers import KEY_COLUMNS

    columns = setting.columns()
    assert tuple(columns[c] for c in KEY_COLUMNS) == setting.key()
