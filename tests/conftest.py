"""Shared fixtures: one ``xp`` fixture over every array backend, and the Hypothesis profile.

``xp`` yields a :class:`backends.Backend` (``name``, ``xp``, ``device``, ``asarray``,
``to_numpy``); its test ids are the backend names, so ``pytest -rs -v`` shows what passed or
skipped per backend. GPU backends (cupy, torch:cuda, jax:cuda) skip cleanly without a GPU.

Hypothesis runs under the ``hessarray`` profile: few examples (``HESSARRAY_HYPOTHESIS_EXAMPLES``
raises them), no example database. Its examples are random per session, with the seed in the
report header (``HESSARRAY_HYPOTHESIS_SEED`` repeats it). In CI (the ``CI`` environment
variable set to anything but ``0``/``false``/``no``; CI services set ``CI=true``) they are the
same on every run: the profile is derandomized (each test's examples follow from its name) and
the seed the ``@seed`` tests share is 0, so a CI failure reproduces by running the same test
with ``CI=true``.
"""

from __future__ import annotations

import os

import pytest
from backends import BACKENDS, Backend, make_backend
from hypothesis import HealthCheck, settings
from strategies import HYPOTHESIS_SEED, IN_CI

# Few examples by default (the whole suite must stay fast on two cores); raise them with
# HESSARRAY_HYPOTHESIS_EXAMPLES=500 for a deeper search. No example database is written into
# the repository; a failure prints a reproduction blob, and the seed is in the report header.
settings.register_profile(
    "hessarray",
    deadline=None,
    max_examples=int(os.environ.get("HESSARRAY_HYPOTHESIS_EXAMPLES", "10")),
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
    print_blob=True,
    derandomize=IN_CI,
)
settings.load_profile("hessarray")


def pytest_report_header(config):
    where = ", derandomized (CI)" if IN_CI else ""
    return f"hessarray tests: hypothesis seed {HYPOTHESIS_SEED}{where} (set HESSARRAY_HYPOTHESIS_SEED to repeat)"


@pytest.fixture(params=BACKENDS, ids=BACKENDS)
def xp(request) -> Backend:
    """One array backend per test id (``pytest.skip`` for unusable GPU backends)."""
    return make_backend(request.param)


@pytest.fixture
def portable(monkeypatch):
    """Switch hessarray's compiled NumPy code (``hessarray._numpy.ENABLED``) off for the
    duration of a block (``with portable():``); on otherwise, as by default with numba
    installed."""
    from hessarray import _numpy

    class Off:
        def __enter__(self):
            monkeypatch.setattr(_numpy, "ENABLED", False)

        def __exit__(self, *exc):
            monkeypatch.setattr(_numpy, "ENABLED", True)

    monkeypatch.setattr(_numpy, "ENABLED", True)
    return Off


@pytest.fixture
def matches_portable(portable):
    """``check(fast, model, x, tol)``: a compiled whole-network path ``fast(layers, x, part)``
    gives the portable forward mode's value, Jacobian and Hessian part for every part, each
    within ``tol · max(1, max|expected|)``, of the same shape and dtype, and a Hessian whose
    two halves are written alike."""
    import numpy as np
    from reference import assert_close

    import hessarray as ha

    def check(fast, model, x, tol):
        for part in ("full", "diag", "trace"):
            got = fast(model.layers, x, part)
            assert got is not None, "the compiled path applies"
            with portable():
                want = ha.engine.forward_mode(model.layers, x, True, part=part)
            for g, w in zip(got, want):
                assert g.shape == w.shape and g.dtype == w.dtype
                assert_close(g, w, tol)
        h = fast(model.layers, x, "full")[2]
        np.testing.assert_array_equal(h, np.swapaxes(h, -1, -2))

    return check


@pytest.fixture
def kernel_threads(monkeypatch):
    """``names = kernel_threads(module, "kernel")``: from then on, the name of each thread that
    calls ``module.kernel`` is appended to the list ``names``."""
    import threading

    def record(module, name):
        names: list[str] = []
        kernel = getattr(module, name)

        def recording(*args):
            names.append(threading.current_thread().name)
            return kernel(*args)

        monkeypatch.setattr(module, name, recording)
        return names

    return record
