"""The one exception the helpers raise when the environment cannot give them what they need."""

from __future__ import annotations


class SetupError(RuntimeError):
    """A binary, data file or server the tests need is missing or did not start.

    A plain exception rather than ``pytest.fail`` so that the benchmarks can use the same
    helpers; ``tests/conftest.py`` turns it into a failure (the suite never skips for it).
    """
