"""Importable plugins for tests of ``rfbench.models.external`` (``tests.plugins.velocity:make``)."""
