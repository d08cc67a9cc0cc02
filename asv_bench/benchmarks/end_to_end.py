"""Whole calls of the public API: input Hessians (both modes), Jacobians, parameter Hessians.

Problems are tanh MLPs (two hidden layers) kept small, so that ``asv run --quick`` stays short:

``narrow``  d=2,  width 32, batch 512   (forward mode's home: d ≪ width)
``wide``    d=48, width 16, batch 256   (reverse mode's home: d ≫ width)

``time_*`` measure the call (synchronised on GPUs), ``peakmem_*`` the process's peak resident
memory around it, and ``track_device_peak_bytes`` the device memory peak (GPU backends only).

:class:`Executors` (NumPy only) times ``ha.derivatives`` over the executor that runs, the
activation and the network (MLP or residual network) at both problem sizes.
"""

from __future__ import annotations

import numpy as np

from .common import (
    ACTIVATIONS,
    BACKENDS,
    EXECUTORS,
    Call,
    get_backend,
    ha,
    mlp_arrays,
    mlp_model,
    random_input,
    resnet_model,
    set_compiled,
)

PROBLEMS = {"narrow": (2, 32, 512), "wide": (48, 16, 256)}


class _Problem:
    """Set up ``self.call`` (a :class:`Call`) and ``self.x`` for one problem on one backend."""

    scalar = True
    out = 1

    def make(self, backend, problem, fn):
        d, width, batch = PROBLEMS[problem]
        self.be = get_backend(backend)
        arrays = mlp_arrays(d, width, out=self.out)
        self.call = Call(self.be, arrays, lambda a: mlp_model(a, scalar=self.scalar), fn)
        self.x = random_input(self.be, (batch, d))
        self.call(self.x)  # compile and warm up


class InputHessian(_Problem):
    """``ha.derivatives(model, x, mode=...)``: value, gradient and Hessian of every sample."""

    params = (BACKENDS, list(PROBLEMS), ["forward", "reverse"])
    param_names = ["backend", "problem", "mode"]

    def setup(self, backend, problem, mode):
        self.make(backend, problem, lambda model, x: tuple(ha.derivatives(model, x, mode=mode)))

    def time_derivatives(self, backend, problem, mode):
        self.call(self.x)

    def peakmem_derivatives(self, backend, problem, mode):
        self.call(self.x)


class Jacobian(_Problem):
    """``ha.jacobian(model, x)`` of a model with 8 outputs (no ``Sum``)."""

    params = (BACKENDS, list(PROBLEMS))
    param_names = ["backend", "problem"]
    scalar = False
    out = 8

    def setup(self, backend, problem):
        self.make(backend, problem, ha.jacobian)

    def time_jacobian(self, backend, problem):
        self.call(self.x)

    def peakmem_jacobian(self, backend, problem):
        self.call(self.x)


class ParameterHessian(_Problem):
    """``ha.hessian(model, x, wrt=...)`` of the batch-summed output: first or last hidden weight."""

    params = (BACKENDS, list(PROBLEMS), ["0.weight", "2.weight"])
    param_names = ["backend", "problem", "wrt"]

    def setup(self, backend, problem, wrt):
        self.make(backend, problem, lambda model, x: ha.hessian(model, x, wrt=wrt))

    def time_param_hessian(self, backend, problem, wrt):
        self.call(self.x)

    def peakmem_param_hessian(self, backend, problem, wrt):
        self.call(self.x)


class DeviceMemory(_Problem):
    """Device memory peak of ``ha.derivatives`` (CuPy pool, ``torch.cuda``, JAX GPU stats)."""

    params = (BACKENDS, list(PROBLEMS))
    param_names = ["backend", "problem"]
    unit = "bytes"

    def setup(self, backend, problem):
        be = get_backend(backend)
        if not be.gpu:
            raise NotImplementedError(f"{backend} has no GPU here")
        self.make(backend, problem, lambda model, x: tuple(ha.derivatives(model, x)))

    def track_device_peak_bytes(self, backend, problem):
        self.be.reset_peak()
        out = self.call(self.x)
        peak = self.be.peak_bytes()
        del out
        return peak


class Executors:
    """``ha.derivatives(model, x)`` (``mode="auto"``) on NumPy, per executor, activation and
    network: ``mlp`` (:func:`.common.mlp_model`) or ``resnet`` (:func:`.common.resnet_model`,
    one residual block: as many activations as the MLP).

    ``executor="portable"`` switches NumPy's compiled executor off for the benchmark (``setup``;
    ``teardown`` restores it). A combination where ``ha.plan(model, x).executor`` would not be
    the requested executor is skipped (``NotImplementedError``).
    """

    params = (EXECUTORS, list(ACTIVATIONS), ["mlp", "resnet"], list(PROBLEMS))
    param_names = ["executor", "activation", "network", "problem"]

    def setup(self, executor, activation, network, problem):
        d, width, batch = PROBLEMS[problem]
        arrays = mlp_arrays(d, width)
        self.model = mlp_model(arrays, activation=activation) if network == "mlp" else resnet_model(arrays, activation)
        self.x = np.random.default_rng(1).standard_normal((batch, d))
        self._flags = set_compiled(False) if executor == "portable" else None
        runs = ha.plan(self.model, self.x).executor
        if runs != executor:
            self.teardown(executor, activation, network, problem)
            raise NotImplementedError(f"the plan runs {runs!r} here, not {executor!r}")
        ha.derivatives(self.model, self.x)  # compile (numba, cached on disk) and warm up

    def teardown(self, executor, activation, network, problem):
        if getattr(self, "_flags", None) is not None:
            set_compiled(self._flags)
            self._flags = None

    def time_derivatives(self, executor, activation, network, problem):
        ha.derivatives(self.model, self.x)
