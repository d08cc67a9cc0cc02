"""Conversion of PyTorch models into hessarray models, and moving NumPy data onto any backend.

:func:`from_torch` turns a ``torch.nn.Sequential`` of ``torch.nn.Linear`` layers and
activations into a :class:`hessarray.Sequential` on the array library and device of your
choice (NumPy by default). PyTorch is optional: it is imported only when the function runs.

The private helpers :func:`resolve_namespace`, :func:`resolve_dtype` and :func:`from_numpy`
are shared with :mod:`hessarray.io`.
"""

from __future__ import annotations

from typing import Any

import array_api_compat
import numpy as np

from .layers import ELU, Dense, Identity, Layer, LeakyReLU, ReLU, Sigmoid, SiLU, Softplus, Tanh
from .model import Sequential

__all__ = ["from_torch"]

#: Real floating dtypes a model's weights may have, by name.
FLOAT_DTYPES = ("float16", "float32", "float64")


# -- namespaces, dtypes and devices ------------------------------------------------------------
def resolve_namespace(xp: Any = None) -> Any:
    """The array-API namespace to build arrays with, from a namespace or a library module.

    Parameters
    ----------
    xp : module, optional
        ``numpy``, ``cupy``, ``jax.numpy``, ``torch``, ``array_api_strict``, ``dask.array``, or
        one of their ``array_api_compat`` wrappers, or any namespace following the array API
        standard. ``None`` means NumPy.

    Returns
    -------
    module
        A namespace whose ``asarray`` takes ``dtype`` and ``device`` keywords.

    Raises
    ------
    TypeError
        If ``xp`` is not an array namespace.
    """
    if xp is not None and not isinstance(getattr(xp, "__name__", None), str):
        raise TypeError(
            f"xp must be an array namespace or library module (numpy, cupy, jax.numpy, torch, "
            f"array_api_strict, dask.array), got {xp!r}"
        )
    if xp is None or array_api_compat.is_numpy_namespace(xp):
        import array_api_compat.numpy as compat_numpy

        return compat_numpy
    if array_api_compat.is_torch_namespace(xp):
        import array_api_compat.torch as compat_torch

        return compat_torch
    if array_api_compat.is_cupy_namespace(xp):
        import array_api_compat.cupy as compat_cupy

        return compat_cupy
    if array_api_compat.is_dask_namespace(xp):
        import array_api_compat.dask.array as compat_dask

        return compat_dask
    if array_api_compat.is_jax_namespace(xp) or array_api_compat.is_array_api_strict_namespace(xp):
        return xp
    if hasattr(xp, "asarray") and hasattr(xp, "__array_api_version__"):
        return xp  # any other namespace that follows the standard
    raise TypeError(
        f"xp must be an array namespace or library module (numpy, cupy, jax.numpy, torch, "
        f"array_api_strict, dask.array), got {xp!r}"
    )


def resolve_dtype(ns: Any, dtype: Any) -> Any:
    """``dtype`` (a name such as ``"float64"`` or a dtype object) as a real floating dtype of ``ns``.

    ``None`` is returned unchanged (keep the source's dtype). ``TypeError`` for anything that is
    not ``float16``, ``float32`` or ``float64``.
    """
    if dtype is None:
        return None
    if isinstance(dtype, str):
        name = dtype
    else:
        name = None
        for candidate in FLOAT_DTYPES:
            own = getattr(ns, candidate, None)
            try:
                if own is not None and (dtype is own or bool(dtype == own)):
                    return own
            except Exception:  # comparisons across libraries may raise
                pass
        try:
            name = np.dtype(dtype).name  # numpy / jax scalar types and dtypes
        except TypeError:
            name = str(dtype).rsplit(".", 1)[-1]  # torch.float64, array_api_strict.float64
    if name not in FLOAT_DTYPES or getattr(ns, name, None) is None:
        raise TypeError(f"dtype must be one of {', '.join(FLOAT_DTYPES)} (real floating), got {dtype!r}")
    return getattr(ns, name)


def from_numpy(ns: Any, a: np.ndarray, *, device: Any = None, dtype: Any = None) -> Any:
    """A NumPy array as an array of namespace ``ns`` (on ``device`` and in ``dtype`` when given).

    The result never shares memory with ``a`` when ``ns`` is NumPy or Dask (``a`` is copied);
    other libraries copy on their own.
    """
    if array_api_compat.is_numpy_namespace(ns) or array_api_compat.is_dask_namespace(ns):
        a = np.array(a, copy=True)
    kwargs = {}
    if device is not None:
        kwargs["device"] = device
    if dtype is not None:
        kwargs["dtype"] = dtype
    return ns.asarray(a, **kwargs)


# -- PyTorch --------------------------------------------------------------------------------------
def _torch_layers() -> dict[str, Any]:
    """Supported ``torch.nn`` module names -> converter of a module into a hessarray layer."""
    return {
        "Linear": None,  # handled by from_torch: it holds the weights
        "Tanh": lambda m: Tanh(),
        "Sigmoid": lambda m: Sigmoid(),
        "Softplus": lambda m: Softplus(float(m.beta)),
        "ReLU": lambda m: ReLU(),
        "LeakyReLU": lambda m: LeakyReLU(float(m.negative_slope)),
        "ELU": lambda m: ELU(float(m.alpha)),
        "SiLU": lambda m: SiLU(),
        "Identity": lambda m: Identity(),
    }


def _supported_class(torch: Any, child: Any, names: list[str]) -> str | None:
    """The name of the supported ``torch.nn`` class ``child`` is (or a subclass of, keeping its
    ``forward``), or ``None``."""
    for name in names:
        cls = getattr(torch.nn, name)
        if isinstance(child, cls) and type(child).forward is cls.forward:
            return name
    return None


def from_torch(module: Any, *, xp: Any = None, device: Any = None, dtype: Any = None) -> Sequential:
    """Convert a ``torch.nn.Sequential`` of linear layers and activations into a hessarray model.

    The weights are copied: later changes to the PyTorch module do not affect the result, and
    the result holds no autograd history.

    Parameters
    ----------
    module : torch.nn.Sequential
        Made of ``torch.nn.Linear`` and the activations ``Tanh``, ``Sigmoid``,
        ``Softplus(beta)``, ``ReLU``, ``LeakyReLU(negative_slope)``, ``ELU(alpha)``, ``SiLU``
        and ``Identity``; nested ``torch.nn.Sequential`` containers are flattened. Subclasses
        of these are accepted only if they keep the parent's ``forward``. ``Softplus``'s
        ``threshold`` (PyTorch's switch to the identity for large inputs, an approximation) is
        ignored: hessarray evaluates softplus exactly and stably for every input, so outputs
        can differ from PyTorch's by about ``exp(-threshold)`` beyond the threshold.
    xp : module, optional
        The array library of the result: ``numpy`` (default), ``cupy``, ``jax.numpy``,
        ``torch``, ``array_api_strict``, ``dask.array`` or their ``array_api_compat``
        namespaces.
    device : object, optional
        Passed as ``xp.asarray(..., device=device)``. For ``xp=torch`` without a device the
        weights stay on the module's device (as detached clones).
    dtype : str or dtype, optional
        ``"float16"``, ``"float32"`` or ``"float64"`` (or the library's dtype object); by
        default each weight keeps its PyTorch dtype.

    Returns
    -------
    Sequential
        The model, with one :class:`~hessarray.Dense` per ``Linear`` (weight of shape
        ``(out, in)``, bias ``(out,)`` or none) and one activation layer per activation.

    Raises
    ------
    TypeError
        If ``module`` is not a ``torch.nn.Sequential`` (the message names its type), or a child
        module is not supported (the message names it and its index, dotted for nested
        containers, e.g. ``module 2 (Dropout)`` or ``module 1.0 (Conv1d)``), or ``xp`` or
        ``dtype`` is not understood.
    ValueError
        If the module is empty or has uninitialized (lazy) parameters, or the layer widths do
        not chain.
    ImportError
        If PyTorch is not installed.

    Examples
    --------
    >>> import numpy as np, torch, hessarray as ha
    >>> from hessarray.convert import from_torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Softplus(beta=2.0),
    ...                           torch.nn.Linear(8, 1)).double()
    >>> model = from_torch(net)
    >>> [type(layer).__name__ for layer in model], model[1].beta
    (['Dense', 'Softplus', 'Dense'], 2.0)
    >>> x = np.random.default_rng(0).standard_normal((5, 2))
    >>> bool(np.allclose(model(x), net(torch.from_numpy(x)).detach().numpy()))
    True
    >>> ha.hessian(model, x).shape
    (5, 1, 2, 2)

    The same model on PyTorch itself (weights detached and cloned), in float32:

    >>> model_t = from_torch(net, xp=torch, dtype="float32")
    >>> model_t[0].weight.dtype, model_t[0].weight.requires_grad
    (torch.float32, False)
    """
    import torch

    if not isinstance(module, torch.nn.Sequential) or type(module).forward is not torch.nn.Sequential.forward:
        kind = f"{type(module).__module__}.{type(module).__qualname__}"
        raise TypeError(f"from_torch expects a torch.nn.Sequential, got {kind}")
    ns = resolve_namespace(xp)
    to_torch = array_api_compat.is_torch_namespace(ns)
    target_dtype = resolve_dtype(ns, dtype)
    converters = _torch_layers()
    names = list(converters)

    def copy(p: Any) -> Any:
        p = p.detach()
        if to_torch:
            out = p.to(device=p.device if device is None else device, copy=True)
            return out if target_dtype is None else out.to(target_dtype)
        a = p.cpu()
        if a.dtype == torch.bfloat16:  # NumPy has no bfloat16; widen it exactly
            a = a.to(torch.float32)
        return from_numpy(ns, a.numpy(), device=device, dtype=target_dtype)

    layers: list[Layer] = []

    def walk(container: Any, prefix: str) -> None:
        # ``_modules``, not ``named_children()``: the latter skips a module used twice, which
        # ``Sequential.forward`` applies twice.
        for index, (name, child) in enumerate(container._modules.items()):
            where = f"{prefix}{index}"
            named = "" if name == str(index) else f" named {name!r}"
            if isinstance(child, torch.nn.Sequential) and type(child).forward is torch.nn.Sequential.forward:
                walk(child, where + ".")
                continue
            kind = _supported_class(torch, child, names)
            if kind is None:
                raise TypeError(
                    f"module {where} ({type(child).__name__}){named} is not supported; "
                    f"supported: {', '.join(names)} and nested Sequential"
                )
            if kind != "Linear":
                layers.append(converters[kind](child))
                continue
            params = [child.weight] + ([] if child.bias is None else [child.bias])
            if any(isinstance(p, torch.nn.parameter.UninitializedParameter) for p in params):
                raise ValueError(
                    f"module {where} (Linear){named} has uninitialized (lazy) parameters; run the module once first"
                )
            bias = None if child.bias is None else copy(child.bias)
            layers.append(Dense(copy(child.weight), bias))

    walk(module, "")
    if not layers:
        raise ValueError("from_torch: the torch.nn.Sequential has no layers")
    return Sequential(*layers)
