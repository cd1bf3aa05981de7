"""The GPU check script runs on the CPU, so it is known to work before a GPU is lent."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "gpu_check.py"


def test_gpu_check_smoke_on_cpu(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--smoke", "--device", "cpu", "--out", str(tmp_path)]) == 0
    report = (tmp_path / "gpu_check.md").read_text()
    for heading in ("## 1. Quick run on toy2d", "## 2. Time per NFE", "## 3. scipy RK45"):
        assert heading in report
    assert "| rk45 |" in report and "| dopri5 |" in report
    assert "Wall-time ratio rk45 / dopri5" in report
