"""rfbench: benchmark rectified-flow generators over ODE solvers, NFE, quality and wall time.

The Python API, one function per stage; the command line (``rfbench``) wires the same:

- ``solve(setting, velocity, x0)``: one ODE solve with any registered solver;
- ``Setting``: a solver and its setting (steps and time grid, or tolerances);
- ``generate(model, setting, n, shape, seed=...)``: n samples, counted and timed;
- ``integrate(model, setting, n, initial, ...)``: the same from any start states;
- ``train(spec, data)``: a rectified-flow model (AdamW, clipping, EMA, checkpoints);
- ``run(RunConfig(...))``: a whole grid of models x settings x seeds, into a run directory;
- ``read_run(path)``: a run directory's results as a DataFrame.

>>> import torch
>>> from rfbench import Setting, generate
>>> velocity = lambda x, t: -x
>>> samples = generate(velocity, Setting("rk4", steps=8), 4, (2,), seed=0, progress=False)
>>> samples.nfe_per_solve
[32]

Everything is imported on first use, so ``import rfbench`` stays light.
"""

from __future__ import annotations

__version__ = "0.1.0"

_API = {
    "Setting": "rfbench.solvers",
    "solve": "rfbench.solvers",
    "generate": "rfbench.sample",
    "integrate": "rfbench.sample",
    "train": "rfbench.train",
    "RunConfig": "rfbench.config",
    "run": "rfbench.runner",
    "read_run": "rfbench.results",
}
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'rfbench' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
