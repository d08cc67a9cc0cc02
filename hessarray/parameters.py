"""Curvature with respect to all parameters: Hessian and Gauss-Newton blocks, products, operators.

Everything is exact and summed over the batch (the model's outputs summed too, for models
without a loss), like :func:`hessarray.hessian` with ``wrt=``. Blocks are returned as a
mapping from parameter-name pairs to arrays of shape ``shape_a + shape_b``.
"""

from __future__ import annotations

import math
from typing import Any

from ._backend import device
from ._dask import dask_aware, one_sample_probe
from .api import _check_model
from .engine.batching import map_blocks
from .engine.budget import check_progress, itemsize, progress_bar
from .engine.parameter_space import owner_blocks, parameter_products, top_level_blocks
from .engine.plan import make_plan
from .model import Sequential
from .tuning import FULL_MATRIX_COLUMNS, MAX_BYTES

Array = Any

__all__ = ["ParameterOperator", "gauss_newton", "parameter_hessian", "parameter_hvp", "parameter_operator"]


def _groups(model: Sequential) -> dict[str, list[str]]:
    """Parameter names grouped by the layer that owns them (``"0"``, ``"2.1"``, …)."""
    groups: dict[str, list[str]] = {}
    for name in model.parameters():
        groups.setdefault(name.rpartition(".")[0], []).append(name)
    return groups


def _top_level_owners(model: Sequential, groups: dict[str, list[str]]) -> list[str]:
    """Owners that are top-level layers holding their own parameters (``Dense``): their
    blocks come from one backward pass. Parameters nested in composite layers (``"2.0"``)
    or owned elsewhere go through the owner-by-owner path."""
    return [o for o in groups if o.isdigit() and model.layers[int(o)].owns_parameters]


def _size(a: Array) -> int:
    return math.prod(a.shape)


def _check_memory(model: Sequential, x: Array, max_bytes: int, what: str) -> None:
    total = sum(_size(a) for a in model.parameters().values())
    need = total * total * itemsize(x)
    if need > max_bytes:
        raise MemoryError(
            f"{what} has {total} x {total} entries and would need {need / 2**30:.2f} GiB, over the "
            f"limit of {max_bytes / 2**30:.2f} GiB (max_bytes); use blocks='layer' (per-layer blocks) or "
            f"parameter_operator(...) (matrix-free products) instead, or raise max_bytes"
        )


def _prepare(model: Sequential, x: Array, ggn: bool):
    model = _check_model(model)
    xp, x2, single = model.prepare(x)
    if ggn and not model.scalar_output:
        raise ValueError(
            f"the Gauss-Newton matrix needs a model ending in a loss; this one ends in {model.layers[-1]!r}"
        )
    return model, xp, x2, single


def _blocks(model, x, blocks, flat, per_sample, chunk_size, max_bytes, ggn, max_memory, progress) -> Any:
    if blocks not in ("layer", "full"):
        raise ValueError(f"blocks must be 'layer' or 'full', got {blocks!r}")
    check_progress(progress)
    model, xp, x2, single = _prepare(model, x, ggn)
    what = "the Gauss-Newton matrix" if ggn else "the parameter Hessian"
    if blocks == "full" or flat:
        if per_sample:
            raise ValueError("per_sample=True is available with blocks='layer' and flat=False")
        _check_memory(model, x2, max_bytes, what)
    if blocks == "full":
        matrix = _full_matrix(model, x2, xp, chunk_size, ggn, max_memory, progress)
        return matrix if flat else _split(model, matrix, xp)
    groups = _groups(model)
    # Per block: the summed blocks (partial, total, new total); per sample: the Hessians pulled
    # back through the widest layer and the inputs' outer products (and the blocks themselves).
    params = model.parameters()
    entries = sum(_size(params[a]) * _size(params[b]) for names in groups.values() for a in names for b in names)
    widths = [x2.shape[1]]
    for layer in model.layers:
        widths.append(layer.out_width(widths[-1]))
    widest = max(widths)
    per = 6 * widest * widest + (entries if per_sample else 0)
    item = itemsize(x2)
    plan = make_plan(
        model.layers,
        x2.shape[0],
        x2.shape[1],
        x2,
        xp,
        mode="forward",
        chunk_size=chunk_size,
        max_memory=max_memory,
        sample_bytes=item * per,
        block_bytes=0 if per_sample else 3 * item * entries,
    )
    top = _top_level_owners(model, groups)
    # (function of a block of layers and samples -> blocks, the (name, name) key of each)
    jobs: list[tuple[Any, list[tuple[str, str]]]] = []
    if top:  # one backward pass of Hessians for all of them
        local_names = {int(o): [name.rpartition(".")[2] for name in groups[o]] for o in top}
        pairs = {i: [(a, b) for a in names for b in names] for i, names in local_names.items()}
        keys = [(i, a, b) for i, local in pairs.items() for a, b in local]

        def run_top(layers, xb):
            found = top_level_blocks(layers, xb, pairs, ggn, per_sample)
            return tuple(found[key] for key in keys)

        jobs.append((run_top, [(f"{i}.{a}", f"{i}.{b}") for i, a, b in keys]))
    for owner, names in groups.items():
        if owner in top:
            continue
        # "2.0.weight": top-level layer 2, name "0.weight" inside it, "weight" in its owner
        index, _, inside = names[0].partition(".")
        local = [(a.rpartition(".")[2], b.rpartition(".")[2]) for a in names for b in names]

        def run(layers, xb, index=int(index), inside=inside, local=local):
            found = owner_blocks(layers, xb, index, inside, local, ggn, per_sample)
            return tuple(found[pair] for pair in local)

        jobs.append((run, [(f"{owner}.{a}", f"{owner}.{b}") for a, b in local]))
    out: dict[tuple[str, str], Array] = {}
    how = "cat" if per_sample else "sum"
    with progress_bar(progress, len(jobs) * plan.blocks(x2.shape[0])) as bar:
        found = [map_blocks(run, model.layers, x2, plan, (how,) * len(keys), xp, progress=bar) for run, keys in jobs]
    for (_, job_keys), values in zip(jobs, found):
        for key, value in zip(job_keys, values):
            if per_sample:  # (B, 1, ...): the outputs are summed
                value = value[0, 0, ...] if single else value[:, 0, ...]
            out[key] = value
    if flat:
        return _assemble(model, out, xp, x2)
    return out


def _full_matrix(model, x2, xp, chunk_size, ggn, max_memory, progress) -> Array:
    """All ``P`` columns of ``H`` (or ``G``) from products with unit directions."""
    params = model.parameters()
    names = list(params)
    sizes = [_size(params[n]) for n in names]
    total = sum(sizes)
    eye = xp.eye(total, dtype=x2.dtype, device=device(x2))
    block = max(1, min(total, FULL_MATRIX_COLUMNS))
    plan = _products_plan(model, x2, xp, block, chunk_size, max_memory)
    rows = []
    with progress_bar(progress, -(-total // block) * plan.blocks(x2.shape[0])) as bar:
        for start in range(0, total, block):
            stop = min(start + block, total)
            v = _unflatten(model, eye[start:stop, :], xp)
            rows.append(_flatten_columns(model, _products(model, x2, xp, v, plan, ggn, bar), xp))
    return xp.concat(rows, axis=0) if len(rows) > 1 else rows[0]


def _products_plan(model, x2, xp, k: int, chunk_size, max_memory) -> Any:
    """The plan of products with ``k`` parameter directions: ``k`` tangents per sample, and
    per block the ``(k, P)`` sums (partial, total, new total) and the directions' copies."""
    total = sum(_size(p) for p in model.parameters().values())
    b, d = x2.shape
    args = {"chunk_size": chunk_size, "max_memory": max_memory, "block_bytes": 4 * itemsize(x2) * k * total}
    return make_plan(model.layers, b, d, x2, xp, mode="forward", part="hvp", directions=k, **args)


def _products(model, x2, xp, v: dict[str, Array], plan: Any, ggn: bool, bar: Any = None) -> dict[str, Array]:
    names = list(model.parameters())

    def run(layers, xb):
        found = parameter_products(layers, xb, v, ggn)
        return tuple(found[n] for n in names)

    values = map_blocks(run, model.layers, x2, plan, ("sum",) * len(names), xp, progress=bar)
    return dict(zip(names, values))


def _unflatten(model, rows: Array, xp) -> dict[str, Array]:
    """``(k, P)`` flat directions -> ``{name: (k, *shape)}``."""
    out, start = {}, 0
    for name, p in model.parameters().items():
        n = _size(p)
        out[name] = xp.reshape(rows[:, start : start + n], (rows.shape[0], *p.shape))
        start += n
    return out


def _flatten_columns(model, found: dict[str, Array], xp) -> Array:
    """``{name: (k, *shape)}`` -> ``(k, P)``."""
    parts = [xp.reshape(found[name], (found[name].shape[0], _size(p))) for name, p in model.parameters().items()]
    return xp.concat(parts, axis=1)


def _split(model, matrix: Array, xp) -> dict[tuple[str, str], Array]:
    params = model.parameters()
    offsets, start = {}, 0
    for name, p in params.items():
        offsets[name] = (start, start + _size(p))
        start += _size(p)
    out = {}
    for a, pa in params.items():
        for b, pb in params.items():
            (a0, a1), (b0, b1) = offsets[a], offsets[b]
            out[(a, b)] = xp.reshape(matrix[a0:a1, b0:b1], (*pa.shape, *pb.shape))
    return out


def _assemble(model, blocks: dict[tuple[str, str], Array], xp, like) -> Array:
    """Layer blocks as one block-diagonal ``(P, P)`` matrix (zeros between layers)."""
    params = model.parameters()
    rows = []
    for a, pa in params.items():
        row = []
        for b, pb in params.items():
            block = blocks.get((a, b))
            if block is None:
                row.append(xp.zeros((_size(pa), _size(pb)), dtype=like.dtype, device=device(like)))
            else:
                row.append(xp.reshape(block, (_size(pa), _size(pb))))
        rows.append(xp.concat(row, axis=1))
    return xp.concat(rows, axis=0)


@dask_aware("flag")
def parameter_hessian(
    model: Sequential,
    x: Array,
    *,
    blocks: str = "layer",
    flat: bool = False,
    per_sample: bool = False,
    chunk_size: int | None = None,
    max_bytes: int = MAX_BYTES,
    max_memory: int | None = None,
    progress: bool = False,
) -> Any:
    """Exact Hessian of the batch-summed output (or loss) with respect to all parameters.

    Parameters
    ----------
    model : Sequential
    x : array, shape (batch, d)
    blocks : {"layer", "full"}
        ``"layer"``: the diagonal blocks of each layer (its weight and bias with each other),
        by Hessian backpropagation: cost per sample ``O(L n³)`` plus one GEMM per block over
        the batch. ``"full"``: every block, cross-layer blocks included, from ``P``
        Hessian-vector products (for small models).
    flat : bool
        Return one ``(P, P)`` matrix in the order of ``model.parameters()`` (zeros outside
        the layer blocks for ``blocks="layer"``) instead of the mapping.
    per_sample : bool
        With ``blocks="layer"``: the blocks of each sample (outputs summed),
        ``(batch,) + shape_a + shape_b``.
    chunk_size : int, optional
        Samples per block of the batch (an upper bound: the memory budget may lower it).
    max_bytes : int
        Limit on the *result*: ``blocks="full"`` or ``flat=True`` raise ``MemoryError``
        before allocating a ``(P, P)`` matrix larger than this (default 2 GiB).
    max_memory : int, optional
        Limit on the *working set* (what the computation holds besides its result): the
        batch is chunked to stay within it, as in :func:`hessarray.derivatives` (default:
        half the device's free memory on GPUs, 1 GiB on CPUs); ``MemoryError`` before any
        work where one sample needs more. Independent of ``max_bytes``.
    progress : bool
        A tqdm progress bar over the chunks of a chunked run (needs ``tqdm``).

    Returns
    -------
    dict or array
        ``{(name_a, name_b): array of shape shape_a + shape_b}``, or the flat matrix.

    Examples
    --------
    >>> import numpy as np, hessarray as ha
    >>> rng = np.random.default_rng(0)
    >>> model = ha.Sequential(ha.Dense(rng.standard_normal((3, 2)), np.zeros(3)), ha.Tanh(),
    ...                       ha.Dense(rng.standard_normal((1, 3))), ha.Sum())
    >>> blocks = ha.parameter_hessian(model, rng.standard_normal((5, 2)))
    >>> blocks["0.weight", "0.bias"].shape
    (3, 2, 3)
    >>> ha.parameter_hessian(model, rng.standard_normal((5, 2)), blocks="full", flat=True).shape
    (12, 12)
    """
    return _blocks(model, x, blocks, flat, per_sample, chunk_size, max_bytes, False, max_memory, progress)


@dask_aware("flag")
def gauss_newton(
    model: Sequential,
    x: Array,
    *,
    blocks: str = "layer",
    flat: bool = False,
    per_sample: bool = False,
    chunk_size: int | None = None,
    max_bytes: int = MAX_BYTES,
    max_memory: int | None = None,
    progress: bool = False,
) -> Any:
    """Generalized Gauss-Newton matrix ``Σ_b J_θᵀ H_loss J_θ`` of a model ending in a loss.

    ``J_θ`` is the Jacobian of the loss input (the network output) with respect to the
    parameters and ``H_loss`` the loss's Hessian. Options and returns as in
    :func:`parameter_hessian`.

    Raises
    ------
    ValueError
        If the model does not end in a loss (or ``Sum``).

    Examples
    --------
    >>> import numpy as np, hessarray as ha
    >>> rng = np.random.default_rng(0)
    >>> model = ha.Sequential(ha.Dense(rng.standard_normal((2, 3))), ha.Tanh(),
    ...                       ha.MSELoss(np.zeros(2)))
    >>> ha.gauss_newton(model, rng.standard_normal((4, 3)), flat=True).shape
    (6, 6)
    """
    return _blocks(model, x, blocks, flat, per_sample, chunk_size, max_bytes, True, max_memory, progress)


@dask_aware("summed")
def parameter_hvp(
    model: Sequential,
    x: Array,
    v: Any,
    *,
    curvature: str = "hessian",
    chunk_size: int | None = None,
    max_memory: int | None = None,
    progress: bool = False,
) -> Any:
    """Parameter-space Hessian (or Gauss-Newton) vector product, matrix-free.

    Parameters
    ----------
    model : Sequential
    x : array, shape (batch, d)
    v : dict or array
        ``{name: array of the parameter's shape}`` (missing names are zero), or a flat
        vector of shape ``(P,)`` in the order of ``model.parameters()``.
    curvature : {"hessian", "gauss_newton"}
    chunk_size, max_memory, progress
        As in :func:`parameter_hessian`.

    Returns
    -------
    dict or array
        Same structure as ``v``: every parameter name, or ``(P,)``.

    Examples
    --------
    >>> import numpy as np, hessarray as ha
    >>> rng = np.random.default_rng(0)
    >>> model = ha.Sequential(ha.Dense(rng.standard_normal((3, 2))), ha.Tanh(), ha.Sum())
    >>> x = rng.standard_normal((4, 2))
    >>> H = ha.parameter_hessian(model, x, blocks="full", flat=True)
    >>> v = rng.standard_normal(6)
    >>> bool(np.allclose(ha.parameter_hvp(model, x, v), H @ v))
    True
    """
    operator = parameter_operator(
        model, x, curvature=curvature, chunk_size=chunk_size, max_memory=max_memory, progress=progress
    )
    return operator._apply(v)


class ParameterOperator:
    """Matrix-free parameter-space curvature ``A`` (Hessian or Gauss-Newton) at fixed ``x``.

    ``A @ v`` and ``A.matvec(v)`` take a flat ``(P,)`` vector or a ``(P, k)`` matrix (or a
    mapping of names to arrays) and return the same structure. ``shape`` is ``(P, P)``.
    Each product is planned for its number of directions within ``max_memory``.
    """

    def __init__(
        self,
        model: Sequential,
        x: Array,
        curvature: str,
        chunk_size: int | None,
        max_memory: int | None = None,
        progress: bool = False,
    ) -> None:
        if curvature not in ("hessian", "gauss_newton"):
            raise ValueError(f"curvature must be 'hessian' or 'gauss_newton', got {curvature!r}")
        self.model, self.xp, self.x, _ = _prepare(model, x, curvature == "gauss_newton")
        self.ggn = curvature == "gauss_newton"
        self.params = self.model.parameters()
        total = sum(_size(p) for p in self.params.values())
        self.shape = (total, total)
        self.dtype = self.x.dtype
        check_progress(progress)
        self._settings = (chunk_size, max_memory)
        self.progress = progress
        self._plan(1)  # MemoryError now, before any product, where one sample does not fit

    def _plan(self, k: int) -> Any:
        return _products_plan(self.model, self.x, self.xp, k, *self._settings)

    def _run(self, dirs: dict[str, Array], k: int) -> dict[str, Array]:
        plan = self._plan(k)
        with progress_bar(self.progress, plan.blocks(self.x.shape[0])) as bar:
            return _products(self.model, self.x, self.xp, dirs, plan, self.ggn, bar)

    def _apply(self, v: Any) -> Any:
        xp = self.xp
        if isinstance(v, dict):
            unknown = set(v) - set(self.params)
            if unknown:
                raise KeyError(f"unknown parameter names {sorted(unknown)}; valid names are {list(self.params)}")
            dirs = {}
            for name, p in self.params.items():
                if name in v:
                    if tuple(v[name].shape) != tuple(p.shape):
                        raise ValueError(f"v[{name!r}] must have shape {tuple(p.shape)}, got {tuple(v[name].shape)}")
                    dirs[name] = xp.astype(v[name], self.dtype)[None, ...]
            if not dirs:
                return {n: xp.zeros_like(p) for n, p in self.params.items()}
            out = self._run(dirs, 1)
            return {n: out[n][0, ...] for n in self.params}
        shape = tuple(getattr(v, "shape", ()))
        if shape not in ((self.shape[0],),) and not (len(shape) == 2 and shape[0] == self.shape[0]):
            raise ValueError(f"v must have shape ({self.shape[0]},) or ({self.shape[0]}, k), got {shape}")
        rows = xp.astype(v[None, :] if len(shape) == 1 else xp.permute_dims(v, (1, 0)), self.dtype)
        found = self._run(_unflatten(self.model, rows, xp), rows.shape[0])
        out = _flatten_columns(self.model, found, xp)  # (k, P)
        return out[0, :] if len(shape) == 1 else xp.permute_dims(out, (1, 0))

    def matvec(self, v: Any) -> Any:
        """``A v`` for a flat vector ``(P,)``, a matrix ``(P, k)`` or a name mapping."""
        return self._apply(v)

    def __matmul__(self, v: Any) -> Any:
        return self._apply(v)

    def __repr__(self) -> str:
        kind = "GaussNewton" if self.ggn else "Hessian"
        return f"ParameterOperator({kind}, shape={self.shape}{self._where})"

    _where = ""


class DaskParameterOperator(ParameterOperator):
    """A :class:`ParameterOperator` at a Dask ``x``: each product ``A @ v`` is a lazy tree
    reduction of one product per batch chunk (see :func:`parameter_hvp`).

    ``v`` may be a NumPy/CuPy or a Dask array (or a mapping of names to them); the result is
    a Dask array (or a mapping of them).
    """

    _where = ", dask"

    def __init__(self, operator: Any, product: Any, model: Sequential, x: Array, options: dict) -> None:
        # One probe call on a sample of zeros checks the options (curvature name, a loss for
        # Gauss-Newton) now rather than at compute time.
        operator(*one_sample_probe(model, x), **options)
        self._product, self.model, self.x, self._options = product, model, x, options
        total = sum(_size(a) for a in model.parameters().values())
        self.shape = (total, total)
        self.dtype = x.dtype
        self.ggn = options.get("curvature", "hessian") == "gauss_newton"

    def _apply(self, v: Any) -> Any:
        return self._product(self.model, self.x, v, **self._options)


@dask_aware("operator", product=parameter_hvp)
def parameter_operator(
    model: Sequential,
    x: Array,
    *,
    curvature: str = "hessian",
    chunk_size: int | None = None,
    max_memory: int | None = None,
    progress: bool = False,
) -> ParameterOperator:
    """Matrix-free operator for the parameter Hessian or Gauss-Newton matrix at ``x``.

    ``chunk_size``, ``max_memory`` and ``progress`` apply to each product, as in
    :func:`parameter_hessian` (``MemoryError`` here already where one sample does not fit).

    Examples
    --------
    >>> import numpy as np, hessarray as ha
    >>> rng = np.random.default_rng(0)
    >>> model = ha.Sequential(ha.Dense(rng.standard_normal((2, 3))), ha.Tanh(), ha.MSELoss(np.zeros(2)))
    >>> G = ha.parameter_operator(model, rng.standard_normal((4, 3)), curvature="gauss_newton")
    >>> G.shape, (G @ np.ones(6)).shape
    ((6, 6), (6,))
    """
    return ParameterOperator(model, x, curvature, chunk_size, max_memory, progress)
