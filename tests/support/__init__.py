"""Helpers shared by the tests and the benchmarks: servers, clusters, manifests, ports.

Plain modules, one concern each, and no pytest fixtures: ``tests/conftest.py`` wires them into
fixtures, test modules import them (pytest puts ``tests/`` on ``sys.path``:
``pythonpath = ["tests"]`` in pyproject.toml), and ``benchmarks/*.py`` add ``tests/`` to
``sys.path`` themselves. Never the repository root: its ``operator/`` folder would shadow the
standard library's ``operator``. What cannot be set up raises :class:`support.errors.SetupError`,
which conftest turns into a failed test (never a skip) and a benchmark into its exit message.
"""
