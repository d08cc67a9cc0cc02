"""Forward mode: tangents forward, adjoints back, curvature summed as ``Σ_l Lᵀ diag(c) R``.

For a chain of layers with tangents ``T_l`` entering layer ``l`` and adjoints ``λ_l`` leaving
it, the Hessian of output ``i`` with respect to the seed is

    H_i = Σ_l T_lᵀ (Σ_j λ_{l,ij} ∇²φ_{l,j}) T_l

(the notebook's ``I`` and ``O`` terms, unrolled). Each layer returns its term as factor triples
``(L, c, R)`` (``Σ_r L[i] c R[j]``), contracted by dot products for few directions and by one
batched matrix product per triple for many; the diagonal and the trace need only ``L·R``. A
layer may also return the term already contracted (:class:`~hessarray.layers.base.Contracted`).
"""

from __future__ import annotations

from typing import Any

from .. import _delegation
from .._backend import array_namespace, device, diag_embed, identity, matmul_last, repeat_view, symmetrize
from ..layers.base import Contracted, Layer
from ..layers.chain import adjoints, forward_chain
from ..tuning import SMALL_K


def identity_seed(xp: Any, batch: int, n: int, like: Any) -> Any:
    """``(batch, n, n)`` identity per sample, as a broadcast view (no copy): adjoint seeds."""
    return repeat_view(xp, identity(xp, n, like), 0, batch)


def contract(xp: Any, factor: tuple, part: str) -> Any:
    """One factor triple ``(L, c, R)`` contracted to its Hessian term.

    ``part="full"``: ``(B, m, k, k)``, ``Σ_r L[i] c R[j]``; ``"diag"``: ``(B, m, k)``, only
    ``i = j`` (``O(k r)``, no ``k²`` work); ``"trace"``: ``(B, m)``, the sum of the diagonal.

    Up to :data:`~hessarray.tuning.SMALL_K` directions the ``k²`` entries are dot products
    taken in place (``vecdot``, broadcast), beyond it one small matrix product per sample
    (NumPy, float32, many directions, one output: two products and a mirror,
    :func:`hessarray._delegation.contract_symmetric`).
    """
    if isinstance(factor, Contracted):  # the layer contracted it itself (few directions)
        return contracted_part(xp, factor.term, part)
    left, c, right = factor
    k, batch, r = left.shape
    m = c.shape[1]
    if part == "trace":
        return xp.vecdot(xp.sum(left * right, axis=0)[:, None, :], c)
    if part == "diag":
        return xp.permute_dims(xp.vecdot((left * right)[:, :, None, :], c[None, ...]), (1, 2, 0))
    split = _delegation.contract_symmetric(xp, left, c, right)
    if split is not None:
        return split
    lc = left[:, :, None, :] * c[None, ...]  # (k, B, m, r)
    if k <= SMALL_K:
        term = xp.vecdot(lc[:, None, ...], right[None, :, :, None, :])  # (k, k, B, m)
        return xp.permute_dims(term, (2, 3, 0, 1))
    # Per sample (m·k, r) @ (r, k) on sample-major views (NumPy copies them for BLAS itself).
    lc = xp.reshape(xp.permute_dims(lc, (1, 2, 0, 3)), (batch, m * k, r))
    return xp.reshape(xp.matmul(lc, xp.permute_dims(right, (1, 2, 0))), (batch, m, k, k))


def contracted_part(xp: Any, term: Any, part: str) -> Any:
    """The ``part`` of a :class:`Contracted` term ``(B, m, k, k)`` (``k`` is small)."""
    if part == "full":
        return term
    k = term.shape[-1]
    diag = xp.sum(term * identity(xp, k, term), axis=-1)
    return diag if part == "diag" else xp.sum(diag, axis=-1)


def contract_shared(xp: Any, shared: Any, c: Any, part: str) -> Any:
    """``contract`` of ``(t, c, t)`` when the tangents ``t`` are one ``(k, r)`` matrix ``S``
    for every sample (only affine layers before): one matrix product over the samples.

    ``Σ_r S[i, r] c[b, o, r] S[j, r]`` is ``c @ P`` with ``P[r, (i, j)] = S[i, r] S[j, r]``:
    ``(B·m, r) @ (r, k²)`` instead of ``B·m`` products ``(k, r) @ (r, k)``.
    """
    k, r = shared.shape
    batch, m, _ = c.shape
    if part == "trace":
        return xp.vecdot(c, xp.sum(shared * shared, axis=0))
    if part == "diag":
        return matmul_last(xp, c, (shared * shared).T)
    pairs = xp.reshape(shared[:, None, :] * shared[None, :, :], (k * k, r))
    return xp.reshape(matmul_last(xp, c, pairs.T), (batch, m, k, k))


def forward_mode(layers: list[Layer], x: Any, hessian: bool, part: str = "full") -> tuple[Any, Any, Any]:
    """Value ``(B, m)``, Jacobian ``(B, m, d)`` and Hessian ``(B, m, d, d)`` (or ``None``).

    With ``part="diag"`` only the Hessian's diagonal ``(B, m, d)`` is formed, with
    ``part="trace"`` only its trace ``(B, m)``.

    Three passes: values forward, adjoints back (only from the first layer with curvature
    up), tangents forward with each layer's curvature added as soon as it is known, so no
    layer's tangents are kept. Up to the first layer without a constant Jacobian the
    tangents are one ``(d, n)`` matrix ``S`` shared by all samples, and that layer's
    curvature is contracted with it by :func:`contract_shared`.

    When ``S`` has more rows than columns (``d > n``: a dense layer narrows the input), the
    tangents are seeded in that layer's ``n`` coordinates instead (``k = n`` directions,
    not ``d``), and the Jacobian and Hessian are mapped back at the end: ``J Sᵀ`` and
    ``S H Sᵀ``, two matrix products over all samples.
    """
    xp = array_namespace(x)
    batch, d = x.shape
    steps, y = forward_chain(layers, x)
    m = y.shape[1]
    g_out: list = [None] * len(steps)
    if hessian:
        first = next((i for i, s in enumerate(steps) if s.layer.has_curvature), len(steps))
        if first < len(steps):
            g_out[first:] = adjoints(steps[first:], identity_seed(xp, batch, m, x))
    shared = None  # (k, n) tangents shared by all samples; None is the identity
    outer = None  # (d, n): the map back from reduced seeds, or None
    t = None  # per-sample tangents (k, B, n), once they differ between samples
    h = None
    inner_part = part
    for step, g in zip(steps, g_out):
        if t is None:
            jac = step.layer.constant_jacobian(step.cache)
            if jac is not None:
                shared = jac if shared is None else xp.matmul(shared, jac)
                continue
            n = d if shared is None else shared.shape[1]
            if shared is not None and shared.shape[0] > n:
                outer, shared, inner_part = shared, None, "full"  # seeds in the narrower space
            if shared is None:
                seeds = identity(xp, n, x)
            else:
                seeds = _delegation.blas_operand(xp, shared)  # its rows are read often
            k = seeds.shape[0]
            t_in = repeat_view(xp, seeds, 1, batch)
            t, factors = step.layer.push(step.cache, t_in, g)
        else:
            t_in = None
            t, factors = step.layer.push(step.cache, t, g)
        for factor in factors:
            # (t_in, c, t_in) with the seeds shared by all samples: no per-sample products.
            seeded = t_in is not None and not isinstance(factor, Contracted)
            seeded = seeded and factor[0] is t_in and factor[2] is t_in
            if seeded and shared is None:  # identity seeds
                term = identity_part(xp, factor[1], inner_part)
            elif seeded and k <= batch * m:
                term = contract_shared(xp, seeds, factor[1], inner_part)
            else:
                term = contract(xp, factor, inner_part)
            # ``owned``: h is a temporary of this function (a layer's own term may be kept).
            owned = h is not None or not isinstance(factor, Contracted)
            h = term if h is None else h + term
    if t is None:  # only layers with constant Jacobians
        if shared is None:
            shared = xp.eye(d, dtype=x.dtype, device=device(x))
        jac = xp.broadcast_to(xp.permute_dims(shared, (1, 0))[None, ...], (batch, m, d))
    else:
        jac = xp.permute_dims(t, (1, 2, 0))
        if outer is not None:
            jac = matmul_last(xp, jac, xp.permute_dims(outer, (1, 0)))
    if not hessian:
        return y, jac, None
    shape = {"full": (batch, m, d, d), "diag": (batch, m, d), "trace": (batch, m)}[part]
    if h is None:
        return y, jac, xp.zeros(shape, dtype=x.dtype, device=device(x))
    if outer is not None:
        h, owned = map_back(xp, h, outer, part), True
    if part != "full":
        return y, jac, h
    return y, jac, symmetrize(xp, h, owned=owned)


def identity_part(xp: Any, c: Any, part: str) -> Any:
    """``contract`` of ``(I, c, I)``: tangents seeded with the identity, shared by all samples.

    The term is ``diag(c)``: ``(B, m, n, n)``; its diagonal is ``c`` and its trace the sum.
    """
    if part == "trace":
        return xp.sum(c, axis=-1)
    return c if part == "diag" else diag_embed(xp, c)


def map_back(xp: Any, h: Any, outer: Any, part: str) -> Any:
    """``S H Sᵀ`` (or its diagonal or trace) for ``H`` ``(B, m, n, n)`` found in the reduced
    coordinates and ``S`` ``(d, n)``: two matrix products over all samples for the full
    Hessian (the second with ``S`` broadcast over the samples), one for the diagonal, and one
    ``(n, n)`` product for the trace."""
    s_t = xp.permute_dims(outer, (1, 0))
    s_t = _delegation.blas_operand(xp, s_t)  # NumPy: a contiguous copy, for OpenBLAS
    if part == "trace":  # tr(S H Sᵀ) = Σ H ⊙ SᵀS (SᵀS is symmetric)
        return xp.sum(h * xp.matmul(s_t, outer), axis=(-2, -1))
    a = matmul_last(xp, h, s_t)  # (B, m, n, d): H Sᵀ
    if part == "diag":
        return xp.sum(a * s_t, axis=-2)
    # S (H Sᵀ), S broadcast over the samples: no transposed copy of the (B, m, n, d) product
    # (NumPy: faster than one GEMM on a transposed copy, docs/benchmarks.md).
    return xp.matmul(outer, a)
