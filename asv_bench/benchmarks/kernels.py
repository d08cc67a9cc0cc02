"""The per-layer contractions each mode is made of, on one block of samples.

Shapes follow the layer contract (``hessarray/layers/base.py``): ``B`` samples of width ``n``,
``k`` forward tangents, ``m`` adjoints (one output). Forward mode runs ``forward(x)`` on every
layer, ``pull`` for the adjoints, then ``push(cache, t, g)`` (tangents and curvature factors)
and contracts the factors (``hessarray.engine.forward.contract``); reverse mode runs
``forward(x)``, ``pull`` and ``pull_hessian``.
"""

from __future__ import annotations

import os

import numpy as np

from .common import ACTIVATIONS, BACKENDS, get_backend, ha, random_input

BATCH = 256
TANGENTS = 4  # k: the input dimension pushed forward
OUTPUTS = 1  # m


class Kernels:
    """Dense and tanh kernels of both modes, for a block of 256 samples of width ``n``."""

    params = (BACKENDS, [32, 128])
    param_names = ["backend", "width"]

    def setup(self, backend, width):
        from hessarray._backend import array_namespace
        from hessarray.engine.forward import contract

        be = self.be = get_backend(backend)
        rng = np.random.default_rng(0)
        B, n, k, m = BATCH, width, TANGENTS, OUTPUTS
        dense = ha.Dense(be.asarray(rng.standard_normal((n, n)) / np.sqrt(n)), be.asarray(rng.standard_normal(n)))
        tanh = ha.Tanh()
        x = random_input(be, (B, n), 1)
        t = random_input(be, (k, B, n), 2)  # tangents are direction-major
        g = random_input(be, (B, m, n), 3)
        h0 = rng.standard_normal((B, m, n, n))
        h = be.asarray(0.5 * (h0 + np.swapaxes(h0, -1, -2)))  # symmetric, as Hessians are
        xp = array_namespace(x)

        # Caches as the forward pass leaves them (computed once, outside the timing); they are
        # arguments of the kernels so that JAX compiles no large constants.
        _, dense_cache = dense.forward(x)
        _, tanh_cache = tanh.forward(x)
        factors = tanh.push(tanh_cache, t, g)[1] * 4  # four layers' worth of factor triples
        self.kernels = {
            "dense_forward": (lambda x: dense.forward(x)[0], (x,)),
            "dense_push": (lambda c, t: dense.push(c, t)[0], (dense_cache, t)),
            "dense_pull": (lambda c, g: dense.pull(c, g), (dense_cache, g)),
            "dense_pull_hessian": (lambda c, g, h: dense.pull_hessian(c, g, h), (dense_cache, g, h)),
            "tanh_forward": (lambda x: tanh.forward(x), (x,)),
            "tanh_push": (lambda c, t: tanh.push(c, t)[0], (tanh_cache, t)),
            "tanh_push_curvature": (lambda c, t, g: tanh.push(c, t, g), (tanh_cache, t, g)),
            "tanh_pull_hessian": (lambda c, g, h: tanh.pull_hessian(c, g, h), (tanh_cache, g, h)),
            "contract": (lambda f: sum(contract(xp, one, "full") for one in f), (factors,)),
        }
        self.kernels = {name: (be.jit(fn), args) for name, (fn, args) in self.kernels.items()}
        for name in self.kernels:  # compile and warm up
            self._run(name)

    def _run(self, name):
        fn, args = self.kernels[name]
        return self.be.sync(fn(*args))

    def time_dense_forward(self, backend, width):
        """Values only: ``x Wᵀ + b``."""
        self._run("dense_forward")

    def time_dense_push(self, backend, width):
        """Forward mode: ``k`` tangents through a dense layer (one GEMM)."""
        self._run("dense_push")

    def time_dense_pull(self, backend, width):
        """Adjoints back through a dense layer: ``g W``."""
        self._run("dense_pull")

    def time_dense_pull_hessian(self, backend, width):
        """Reverse mode: ``Wᵀ h W`` for every sample."""
        self._run("dense_pull_hessian")

    def time_tanh_forward(self, backend, width):
        """tanh and its first two derivatives."""
        self._run("tanh_forward")

    def time_tanh_push(self, backend, width):
        """Forward mode, Jacobian only: tangents scaled by ``φ'``."""
        self._run("tanh_push")

    def time_tanh_push_curvature(self, backend, width):
        """Forward mode: tangents and the curvature factor triple ``(t, g φ'', t)``."""
        self._run("tanh_push_curvature")

    def time_tanh_pull_hessian(self, backend, width):
        """Reverse mode: ``diag(φ') h diag(φ') + diag(g φ'')`` for every sample."""
        self._run("tanh_pull_hessian")

    def time_contract(self, backend, width):
        """Forward mode: ``Σ_r L c R`` over four layers' curvature factor triples."""
        self._run("contract")


class CompiledNetwork:
    """NumPy's compiled executor (``"numpy-compiled"``) on one thread, 256 samples: ``k = 4``
    inputs, four layers of width ``n`` with the activation ``activation``, one output; value,
    gradient and Hessian through ``ha.derivatives`` (forward mode). Skipped where the plan
    would not run the compiled executor (numba or SciPy missing, or an activation it does not
    serve)."""

    params = ([32, 128], list(ACTIVATIONS))
    param_names = ["width", "activation"]

    def setup(self, width, activation):
        rng = np.random.default_rng(0)
        dims = [TANGENTS] + [width] * 4
        layers = []
        for a, b in zip(dims[:-1], dims[1:]):
            dense = ha.Dense(rng.standard_normal((b, a)) / np.sqrt(a), 0.1 * rng.standard_normal(b))
            layers += [dense, ACTIVATIONS[activation]()]
        layers += [ha.Dense(rng.standard_normal((1, width)) / np.sqrt(width)), ha.Sum()]
        self.model = ha.Sequential(*layers)
        self.x = rng.standard_normal((BATCH, TANGENTS))
        self._threads = os.environ.get("HESSARRAY_THREADS")
        os.environ["HESSARRAY_THREADS"] = "1"
        runs = ha.plan(self.model, self.x, mode="forward").executor
        if runs != "numpy-compiled":
            self.teardown(width, activation)
            raise NotImplementedError(f"the plan runs {runs!r} here, not the compiled executor")
        ha.derivatives(self.model, self.x, mode="forward")  # compile (cached on disk) and warm up

    def teardown(self, width, activation):
        if self._threads is None:
            os.environ.pop("HESSARRAY_THREADS", None)
        else:
            os.environ["HESSARRAY_THREADS"] = self._threads

    def time_network(self, width, activation):
        """Values, adjoints, tangents and curvature of all layers, compiled per tile."""
        ha.derivatives(self.model, self.x, mode="forward")
