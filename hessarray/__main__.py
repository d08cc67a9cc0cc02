"""``python -m hessarray demo | info``: the notebook example, and the backends on this machine."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable
from typing import Any

import numpy as np

import hessarray as ha

# The first block of the notebook's printed table, tf.hessians(c, W1)[0, 0] (shape (4, 3)).
NOTEBOOK_BLOCK = np.array(
    [
        [-3.07510379e-05, -1.77573888e-05, -3.00341927e-05],
        [-1.68371619e-06, -9.72272976e-07, -1.64446666e-06],
        [-3.87932697e-06, -2.24014284e-06, -3.78889499e-06],
        [-8.95037125e-06, -5.16845067e-06, -8.74172688e-06],
    ]
)


def notebook_arrays() -> dict[str, np.ndarray]:
    """The notebook's arrays: ``np.random.seed(0)``, then ``rand`` in this order."""
    rs = np.random.RandomState(0)
    return {
        "W1": rs.rand(4, 3),
        "b1": rs.rand(4, 1),
        "W2": rs.rand(1, 4),
        "b2": rs.rand(1, 1),
        "x": rs.rand(1, 3),
    }


def notebook_model(arrays: dict[str, Any]) -> ha.Sequential:
    """``c = sum(tanh(W2 @ tanh(W1 @ x.T + b1) + b2).T ** 2)`` as a hessarray model."""
    return ha.Sequential(
        ha.Dense(arrays["W1"], arrays["b1"]),
        ha.Tanh(),
        ha.Dense(arrays["W2"], arrays["b2"]),
        ha.Tanh(),
        ha.Square(),
        ha.Sum(),
    )


def _backends() -> list[tuple[str, Callable[[np.ndarray], Any], Callable[[Any], np.ndarray], str]]:
    """(name, to backend, to numpy, devices) for each backend usable here; unusable ones
    are listed with ``None`` converters and the reason in place of the devices."""
    found: list = [("numpy", np.asarray, np.asarray, "cpu")]
    try:
        import array_api_strict as strict

        devices = ", ".join(str(d).split("(")[-1].strip("')") for d in strict.__array_namespace_info__().devices())
        found.append(("array_api_strict", strict.asarray, np.asarray, devices))
    except ImportError:
        pass
    try:
        import torch

        devices = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
        found.append(("torch", torch.asarray, lambda a: a.detach().cpu().numpy(), ", ".join(devices)))
    except ImportError:
        pass
    try:
        import jax

        jax.config.update("jax_enable_x64", True)
        import jax.numpy as jnp

        found.append(("jax", jnp.asarray, np.asarray, ", ".join(str(d) for d in jax.devices())))
    except ImportError:
        pass
    try:
        import dask.array as da

        found.append(("dask", lambda a: da.from_array(a), lambda a: np.asarray(a.compute()), "cpu (lazy graphs)"))
    except ImportError:
        pass
    try:
        import cupy

        count = cupy.cuda.runtime.getDeviceCount()
        found.append(("cupy", cupy.asarray, cupy.asnumpy, ", ".join(f"cuda:{i}" for i in range(count))))
    except Exception as exc:  # ImportError, or CUDARuntimeError when no GPU/driver is present
        if importlib.util.find_spec("cupy") is not None:
            reason = f"installed, unusable here: {type(exc).__name__}: {str(exc).splitlines()[0]}"
            found.append(("cupy", None, None, reason))
    return found


def demo() -> int:
    np.set_printoptions(precision=8, linewidth=100)
    arrays = notebook_arrays()
    model = notebook_model(arrays)
    print("hessarray", ha.__version__, "- the seed notebook's example")
    print("c = sum(tanh(W2 @ tanh(W1 @ x.T + b1) + b2).T ** 2),  np.random.seed(0), rand in order W1 b1 W2 b2 x")
    print(model)
    value, grad_w1, hess_w1 = ha.derivatives(model, arrays["x"], wrt="0.weight")
    print(f"\nc = {float(value):.16f}")
    print("\ngradient with respect to W1, shape", grad_w1.shape)
    print(grad_w1)
    print("\nHessian with respect to W1 (tf.hessians(c, W1)), shape", hess_w1.shape)
    print(hess_w1)
    err = np.max(np.abs(hess_w1[0, 0] - NOTEBOOK_BLOCK)) / np.max(np.abs(NOTEBOOK_BLOCK))
    print(f"\nagreement with the notebook's printed block H[0, 0]: max relative difference {err:.1e}")
    _, grad_x, hess_x = ha.derivatives(model, arrays["x"])
    print("\ngradient with respect to x, shape", grad_x.shape)
    print(grad_x)
    print("\nHessian with respect to x, shape", hess_x.shape, "(TensorFlow's shape: (1, 3, 1, 3))")
    print(hess_x)

    print("\nbackends found on this machine (Hessian w.r.t. W1 recomputed on each, float64):")
    for name, to_backend, to_numpy, devices in _backends():
        if to_backend is None:
            print(f"  {name:17s} {devices}")
            continue
        h = ha.hessian(
            notebook_model({k: to_backend(v) for k, v in arrays.items()}), to_backend(arrays["x"]), wrt="0.weight"
        )
        rel = np.max(np.abs(to_numpy(h) - hess_w1)) / np.max(np.abs(hess_w1))
        print(f"  {name:17s} devices: {devices:30s} result {type(h).__name__}, max rel. diff {rel:.1e}")
    return 0


def info() -> int:
    print("hessarray", ha.__version__, "on Python", sys.version.split()[0])
    for name, to_backend, _, devices in _backends():
        print(f"  {name:17s} {'' if to_backend is None else 'devices: '}{devices}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hessarray", description=__doc__)
    parser.add_argument("command", choices=["demo", "info"], nargs="?", default="demo")
    args = parser.parse_args(argv)
    return demo() if args.command == "demo" else info()


if __name__ == "__main__":
    sys.exit(main())
