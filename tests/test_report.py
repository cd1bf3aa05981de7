"""Tables over seeds: mean, spread, bootstrap CI and paired differences."""

from __future__ import annotations

import pandas as pd
import pytest

from rfbench.errors import UserError
from rfbench.report import paired_differences, seed_summary
from rfbench.results import records_to_frame


def _frame():
    rows = []
    for seed, (euler, rk45) in enumerate([(30.0, 10.0), (34.0, 11.0), (32.0, 12.0)]):
        common = dict(dataset="d", model_id="m", seed=seed, n_samples=100, status="ok")
        rows.append(dict(common, solver="euler", steps=4, nfe=4, fid=euler))
        rows.append(dict(common, solver="rk45", rtol=1e-5, nfe=80 + seed, fid=rk45))
    rows.append(dict(rows[0], seed=9, status="failed", fid=None))
    return records_to_frame(rows)


def test_seed_summary():
    s = seed_summary(_frame()).set_index("solver")
    assert s.loc["euler", "seeds"] == 3 and s.loc["euler", "fid_mean"] == pytest.approx(32.0)
    assert s.loc["euler", "fid_std"] == pytest.approx(2.0)
    assert s.loc["rk45", "nfe"] == pytest.approx(81.0)
    lo, hi = s.loc["euler", "fid_ci_low"], s.loc["euler", "fid_ci_high"]
    assert 30.0 <= lo <= 32.0 <= hi <= 34.0


def test_paired_differences_use_the_same_seed():
    d = paired_differences(_frame(), "rk45").set_index("solver")
    # euler - rk45 per seed: 20, 23, 20.
    assert d.loc["euler", "fid_minus_rk45_mean"] == pytest.approx(21.0)
    assert d.loc["euler", "fid_minus_rk45_count"] == 3
    assert d.loc["euler", "fid_minus_rk45_std"] == pytest.approx(pd.Series([20, 23, 20]).std())


def test_paired_differences_errors():
    with pytest.raises(UserError, match="no successful rows"):
        paired_differences(_frame(), "dopri5")
    two = pd.concat([_frame(), _frame().assign(rtol=1e-3)])
    with pytest.raises(UserError, match="several settings"):
        paired_differences(two, "rk45")
