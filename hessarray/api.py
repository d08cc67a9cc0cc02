"""The public functions: value, Jacobian, gradient and Hessian of a model.

Each takes the model and the user's ``x`` and returns arrays of ``x``'s kind, dtype and
device. Shapes follow the output, as in JAX: per sample, an output of shape ``o`` has a
Jacobian ``o + (d,)`` and a Hessian ``o + (d, d)``; models ending in ``Sum()`` or a loss have
``o = ()``. ``x`` of shape ``(batch, d)`` puts a batch axis in front; ``x`` of shape ``(d,)``
does not.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from . import engine
from ._dask import dask_aware
from .engine import input_derivatives, make_plan, param_derivatives
from .engine.budget import check_progress, progress_bar
from .engine.plan import Plan, check_mode
from .model import Sequential

Array = Any

__all__ = [
    "Derivatives",
    "derivatives",
    "gradient",
    "hessian",
    "hessian_diagonal",
    "hvp",
    "jacobian",
    "laplacian",
    "plan",
]


class Derivatives(NamedTuple):
    """Value, first and second derivatives from one pass (see :func:`derivatives`)."""

    value: Array
    jacobian: Array
    hessian: Array | None


def _check_model(model: Any) -> Sequential:
    if not isinstance(model, Sequential):
        raise TypeError(f"model must be a hessarray.Sequential, got {type(model).__name__}")
    return model


def _compute(model, x, wrt, mode, per_sample, chunk_size, hessian, max_memory, progress) -> Derivatives:
    model = _check_model(model)
    check_mode(mode)
    check_progress(progress)
    xp, x2, single = model.prepare(x)
    scalar = model.scalar_output
    if wrt is None:
        p = _input_plan(model, x2, xp, chunk_size, max_memory, mode=mode, hessian=hessian, executor="auto")
        with progress_bar(progress, p.blocks(x2.shape[0])) as bar:
            out = input_derivatives(model.layers, x2, xp, p, hessian, bar)
        keep_batch = True
    else:
        index, name = model.locate(wrt)
        args = {"mode": mode, "chunk_size": chunk_size, "max_memory": max_memory}
        out = param_derivatives(model.layers, x2, xp, index, name, args, hessian, per_sample, progress)
        keep_batch = per_sample
    if keep_batch:
        out = _per_sample(out, scalar, single)
    return Derivatives(*out)


def _per_sample(out: tuple, scalar: bool, single: bool) -> tuple:
    """``(B, m, ...) -> (B, ...)`` for scalar models; drop the batch axis for 1-D ``x``."""
    out = tuple(None if a is None else (a[:, 0, ...] if scalar else a) for a in out)
    if single:
        out = tuple(None if a is None else a[0, ...] for a in out)
    return out


def _input_plan(model, x2, xp, chunk_size, max_memory, **settings) -> Plan:
    """The plan of a computation with respect to ``x2`` (``settings``: see :func:`make_plan`)."""
    b, d = x2.shape
    return make_plan(model.layers, b, d, x2, xp, chunk_size=chunk_size, max_memory=max_memory, **settings)


def _hessian_part(model, x, part, chunk_size, max_memory, progress) -> Array:
    model = _check_model(model)
    check_progress(progress)
    xp, x2, single = model.prepare(x)
    p = _input_plan(model, x2, xp, chunk_size, max_memory, mode="forward", part=part, executor="auto")
    with progress_bar(progress, p.blocks(x2.shape[0])) as bar:
        _, found = engine.input_hessian_part(model.layers, x2, xp, p, part, bar)
    return _per_sample((found,), model.scalar_output, single)[0]


@dask_aware("wrt")
def derivatives(
    model: Sequential,
    x: Array,
    *,
    wrt: str | None = None,
    mode: str = "auto",
    per_sample: bool = False,
    chunk_size: int | None = None,
    max_memory: int | None = None,
    progress: bool = False,
) -> Derivatives:
    """Value, Jacobian (gradient) and Hessian of a model from one pass.

    Parameters
    ----------
    model : Sequential
    x : array, shape (batch, d) or (d,)
        Real floating input (float32 or float64) of any array-API library.
    wrt : str, optional
        ``None`` (default) differentiates with respect to ``x``, per sample. A parameter name
        from ``model.parameters()`` (e.g. ``"0.weight"``) differentiates with respect to
        that parameter the output summed over the batch and output axes, as TensorFlow's
        ``tf.gradients`` / ``tf.hessians`` do.
    mode : {"auto", "forward", "reverse"}
        ``"forward"`` pushes ``d`` tangents forward (``O(L n² d + L n d²)`` per sample, for
        ``d ≤ n``); ``"reverse"`` pulls Hessians back (``O(L n³)``, for ``d > n``);
        ``"auto"`` picks by the FLOP estimates, forward unless reverse is clearly cheaper
        (see :func:`plan`).
    per_sample : bool
        With ``wrt``, keep the batch and output axes in front instead of summing them.
    chunk_size : int, optional
        Samples per block (default: cache-sized blocks on CPUs, the whole batch elsewhere,
        within the memory budget). NumPy's compiled whole-network paths (a tanh MLP, a
        residual tanh network) work in tiles of their own and need no blocks. It is an upper
        bound: the memory budget (``max_memory`` or its default) may lower it.
    max_memory : int, optional
        Bytes the computation may hold besides its outputs (its working set); the batch is
        chunked to stay within it, with results identical to an unchunked run. Default: half
        of the device's free memory on GPUs, 1 GiB on CPUs, no limit on Dask (see "Memory
        and progress" in the backends guide). ``MemoryError`` before any work where one
        sample needs more (the message gives the minimum).
    progress : bool
        Show a tqdm progress bar over the chunks of a chunked run (needs ``tqdm``:
        ``pip install hessarray[progress]``; ``ImportError`` otherwise).

    Returns
    -------
    Derivatives
        ``(value, jacobian, hessian)``. With respect to ``x``: shapes ``(batch,) + o``,
        ``(batch,) + o + (d,)`` and ``(batch,) + o + (d, d)``. With respect to a parameter
        of shape ``s``: ``()``, ``s`` and ``s + s``; with ``per_sample=True``
        ``(batch,) + o``, ``(batch,) + o + s`` and ``(batch,) + o + s + s``.

    Examples
    --------
    >>> import numpy as np, hessarray as ha
    >>> model = ha.Sequential(ha.Dense(np.array([[1.0, 2.0]])), ha.Tanh(), ha.Sum())
    >>> value, grad, hess = ha.derivatives(model, np.zeros((3, 2)))
    >>> value.shape, grad.shape, hess.shape
    ((3,), (3, 2), (3, 2, 2))
    """
    return _compute(model, x, wrt, mode, per_sample, chunk_size, True, max_memory, progress)


@dask_aware("wrt")
def hessian(
    model: Sequential,
    x: Array,
    *,
    wrt: str | None = None,
    mode: str = "auto",
    per_sample: bool = False,
    chunk_size: int | None = None,
    max_memory: int | None = None,
    progress: bool = False,
) -> Array:
    """Exact Hessian of the model output, with respect to ``x`` or a parameter.

    Shapes: ``(batch,) + o + (d, d)`` for ``x``; ``s + s`` for a parameter of shape ``s``
    (output summed over batch and outputs), or ``(batch,) + o + s + s`` with
    ``per_sample=True``. Parameters as in :func:`derivatives`.

    Examples
    --------
    >>> import numpy as np, hessarray as ha
    >>> model = ha.Sequential(ha.Square(), ha.Sum())
    >>> ha.hessian(model, np.array([1.0, 2.0]))
    array([[2., 0.],
           [0., 2.]])
    """
    return _compute(model, x, wrt, mode, per_sample, chunk_size, True, max_memory, progress).hessian


@dask_aware("per_sample")
def jacobian(
    model: Sequential,
    x: Array,
    *,
    wrt: str | None = None,
    mode: str = "auto",
    chunk_size: int | None = None,
    max_memory: int | None = None,
    progress: bool = False,
) -> Array:
    """Per-sample Jacobian of the model output: ``(batch,) + o + (d,)``.

    With ``wrt`` a parameter of shape ``s``: ``(batch,) + o + s``. Parameters as in
    :func:`derivatives`.

    Examples
    --------
    >>> import numpy as np, hessarray as ha
    >>> model = ha.Sequential(ha.Dense(np.array([[1.0, 0.0], [0.0, 3.0]])))
    >>> ha.jacobian(model, np.ones(2))
    array([[1., 0.],
           [0., 3.]])
    """
    return _compute(model, x, wrt, mode, True, chunk_size, False, max_memory, progress).jacobian


@dask_aware("wrt")
def gradient(
    model: Sequential,
    x: Array,
    *,
    wrt: str | None = None,
    mode: str = "auto",
    per_sample: bool = False,
    chunk_size: int | None = None,
    max_memory: int | None = None,
    progress: bool = False,
) -> Array:
    """Gradient of a scalar model with respect to ``x`` (``(batch, d)``), or of the summed
    output with respect to a parameter (its shape; ``(batch,) + o + s`` per sample).

    Raises
    ------
    ValueError
        With respect to ``x``, when the model's output is not scalar (use :func:`jacobian`).

    Examples
    --------
    >>> import numpy as np, hessarray as ha
    >>> model = ha.Sequential(ha.Square(), ha.Sum())
    >>> ha.gradient(model, np.array([[1.0, 2.0]]))
    array([[2., 4.]])
    """
    _check_model(model)
    if wrt is None and not model.scalar_output:
        raise ValueError(
            f"gradient needs a model with one output per sample (ending in Sum() or a loss); "
            f"this one ends in {model.layers[-1]!r}: use jacobian instead"
        )
    return _compute(model, x, wrt, mode, per_sample, chunk_size, False, max_memory, progress).jacobian


def plan(
    model: Sequential,
    x: Array,
    *,
    mode: str = "auto",
    chunk_size: int | None = None,
    hessian: bool = True,
    max_memory: int | None = None,
    progress: bool = False,
    part: str = "full",
) -> Plan:
    """The plan (executor, mode, block size, memory budget, FLOP estimates) that
    :func:`derivatives` (``hessian=False``: :func:`jacobian`) with respect to ``x`` runs with
    these settings.

    ``executor`` names what runs: ``"portable"`` (the array-API passes, block by block) or
    ``"numpy-compiled"`` (NumPy's compiled whole-network kernels, where they apply; then
    ``chunk_size`` is the samples per call and ``tile`` the samples per tile the threads share).

    ``chunk_size`` is the block size that runs, sized to keep the working set within
    ``max_memory`` (or the default budget; see :func:`derivatives`); ``working_set`` the
    bytes its blocks hold at most. ``part="diag"`` or ``"trace"`` plans
    :func:`hessian_diagonal` or :func:`laplacian` instead (``mode`` and ``hessian`` are then
    unused). Making a plan runs nothing and changes nothing; ``progress`` is accepted for
    symmetry with the other functions and has no effect.

    Raises
    ------
    MemoryError
        When ``max_memory`` is too small for one sample (as the call itself would).

    Examples
    --------
    >>> import numpy as np, hessarray as ha
    >>> model = ha.Sequential(ha.Dense(np.ones((64, 2))), ha.Tanh(), ha.Dense(np.ones((1, 64))))
    >>> ha.plan(model, np.ones((10, 2))).mode
    'forward'
    """
    xp, x2, _ = _check_model(model).prepare(x)
    if part in ("diag", "trace"):
        return _input_plan(model, x2, xp, chunk_size, max_memory, mode="forward", part=part, executor="auto")
    if part != "full":
        raise ValueError(f"part must be 'full', 'diag' or 'trace', got {part!r}")
    return _input_plan(model, x2, xp, chunk_size, max_memory, mode=mode, hessian=hessian, executor="auto")


@dask_aware("per_sample")
def hessian_diagonal(
    model: Sequential,
    x: Array,
    *,
    chunk_size: int | None = None,
    max_memory: int | None = None,
    progress: bool = False,
) -> Array:
    """Diagonal of the input Hessian per sample, without forming the Hessian.

    Cost per sample ``O(L·n²·d)`` for an MLP (no ``d²`` term). Differentiable by torch
    autograd and usable under ``jax.jit``. ``chunk_size``, ``max_memory`` and ``progress``
    as in :func:`derivatives`.

    Returns
    -------
    array, shape (batch,) + o + (d,)
        ``∂²f/∂x_i²``; no batch axis for ``x`` of shape ``(d,)``.

    Examples
    --------
    >>> import numpy as np, hessarray as ha
    >>> model = ha.Sequential(ha.Dense(np.array([[1.0, 2.0]])), ha.Square(), ha.Sum())
    >>> ha.hessian_diagonal(model, np.ones(2))
    array([2., 8.])
    """
    return _hessian_part(model, x, "diag", chunk_size, max_memory, progress)


@dask_aware("per_sample")
def laplacian(
    model: Sequential,
    x: Array,
    *,
    chunk_size: int | None = None,
    max_memory: int | None = None,
    progress: bool = False,
) -> Array:
    """Laplacian (trace of the input Hessian) per sample, without forming the Hessian.

    Cost per sample ``O(L·n²·d)`` for an MLP, and no ``(batch, d, d)`` array. Differentiable
    by torch autograd and usable under ``jax.jit``, so a physics-informed loss such as
    ``mean((laplacian(model, x) - f(x))**2)`` trains with the host framework.
    ``chunk_size``, ``max_memory`` and ``progress`` as in :func:`derivatives`.

    Returns
    -------
    array, shape (batch,) + o
        ``Σ_i ∂²f/∂x_i²``; no batch axis for ``x`` of shape ``(d,)``.

    Examples
    --------
    >>> import numpy as np, hessarray as ha
    >>> model = ha.Sequential(ha.Square(), ha.Sum())       # f(x) = |x|², Δf = 2d
    >>> ha.laplacian(model, np.ones((2, 3)))
    array([6., 6.])
    """
    return _hessian_part(model, x, "trace", chunk_size, max_memory, progress)


@dask_aware("per_sample", batched=("v",))
def hvp(
    model: Sequential,
    x: Array,
    v: Array,
    *,
    chunk_size: int | None = None,
    max_memory: int | None = None,
    progress: bool = False,
) -> Array:
    """Input Hessian-vector products per sample, without forming the Hessian.

    Forward over reverse: ``k`` tangents pushed forward, second-order adjoints pulled back;
    cost per sample ``O(L·n²·k)`` for an MLP.

    Parameters
    ----------
    model : Sequential
    x : array, shape (batch, d) or (d,)
    v : array, shape (batch, d) or (batch, d, k); (d,) or (d, k) for 1-D ``x``
        One vector, or ``k`` vectors, per sample.
    chunk_size, max_memory, progress
        As in :func:`derivatives`.

    Returns
    -------
    array, shape (batch,) + o + (d,) or (batch,) + o + (d, k)
        ``H v`` with ``H`` the Hessian of each output with respect to ``x``.

    Examples
    --------
    >>> import numpy as np, hessarray as ha
    >>> model = ha.Sequential(ha.Square(), ha.Sum())        # H = 2 I
    >>> ha.hvp(model, np.ones((1, 2)), np.array([[1.0, -1.0]]))
    array([[ 2., -2.]])
    """
    model = _check_model(model)
    check_progress(progress)
    xp, x2, single = model.prepare(x)
    batch, d = x2.shape
    v_shape = tuple(getattr(v, "shape", ()))
    lead = () if single else (batch,)
    if v_shape not in (lead + (d,),) and not (len(v_shape) == len(lead) + 2 and v_shape[:-1] == lead + (d,)):
        want = f"{lead + (d,)} or {lead + (d, 'k')}"
        raise ValueError(f"v must have shape {want} to match x of shape {tuple(x.shape)}, got shape {v_shape}")
    engine.batching.check_same_backend(x, v, "v")
    one = len(v_shape) == len(lead) + 1
    v3 = v[..., None] if one else v
    if single:
        v3 = v3[None, ...]
    v3 = xp.permute_dims(xp.astype(v3, x2.dtype, copy=False), (0, 2, 1))  # (B, k, d): directions as rows
    p = _input_plan(
        model, x2, xp, chunk_size, max_memory, mode="forward", part="hvp", directions=v3.shape[1], executor="auto"
    )
    with progress_bar(progress, p.blocks(x2.shape[0])) as bar:
        _, hv = engine.executors.REGISTRY[p.executor].run(model.layers, x2, xp, p, "hvp", progress=bar, v=v3)
    hv = xp.permute_dims(hv, (0, 1, 3, 2))  # (B, m, d, k)
    if one:
        hv = hv[..., 0]
    return _per_sample((hv,), model.scalar_output, single)[0]
