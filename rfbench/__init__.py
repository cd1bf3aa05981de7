"""rfbench: benchmark rectified-flow generators over ODE solvers, NFE, quality and wall time."""

__version__ = "0.1.0"
