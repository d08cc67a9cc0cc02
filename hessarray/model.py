"""``Sequential``: an ordered chain of layers, its parameter names and its shape checks."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from . import _delegation
from ._backend import check_inputs, device, is_array_api_obj
from ._transfer import move_arrays
from .layers.base import Array, Layer
from .layers.chain import forward_chain


class Sequential:
    """A model ``x ↦ layers[-1](… layers[0](x))`` evaluated on every sample of a batch.

    Parameters
    ----------
    *layers : Layer
        The layers in order. Widths are checked as far as they are known at construction
        (dense layers and targets fix them) and again against the input on every call.

    Examples
    --------
    >>> import numpy as np, hessarray as ha
    >>> rng = np.random.default_rng(0)
    >>> model = ha.Sequential(ha.Dense(rng.standard_normal((8, 3))), ha.Tanh(),
    ...                       ha.Dense(rng.standard_normal((1, 8))), ha.Sum())
    >>> list(model.parameters())
    ['0.weight', '2.weight']
    >>> model(np.zeros((5, 3))).shape, len(model)
    ((5,), 4)
    """

    def __init__(self, *layers: Layer) -> None:
        if len(layers) == 1 and isinstance(layers[0], list | tuple):
            layers = tuple(layers[0])
        if not layers:
            raise ValueError("Sequential needs at least one layer")
        for i, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise TypeError(f"layer {i} is {type(layer).__name__}, not a hessarray layer")
            if layer.scalar_output and i != len(layers) - 1:
                raise ValueError(f"layer {i} ({layer!r}) reduces each sample to a number; it must be last")
        self.layers: list[Layer] = list(layers)
        # Only layers holding per-sample data (targets) check the batch size.
        self._batch_checked = [l for l in self.layers if type(l).check_batch is not Layer.check_batch]
        self._checked: dict = {}  # (type, device) of inputs already checked -> namespace
        self._widths_seen: dict[int, int] = {}
        start = next((i for i, l in enumerate(self.layers) if l.in_width is not None), None)
        if start is not None:
            self._widths(self.layers[start].in_width, start)

    # -- container protocol -------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self) -> Iterator[Layer]:
        return iter(self.layers)

    def __getitem__(self, index: int | slice) -> Layer | Sequential:
        if isinstance(index, slice):
            return Sequential(*self.layers[index])
        return self.layers[index]

    def __repr__(self) -> str:
        inner = ",\n".join(f"  ({i}) {layer!r}" for i, layer in enumerate(self.layers))
        return f"Sequential(\n{inner}\n)"

    # -- structure ---------------------------------------------------------------------------
    @property
    def scalar_output(self) -> bool:
        """Whether the model maps a sample to one number (it ends in ``Sum`` or a loss)."""
        return self.layers[-1].scalar_output

    def parameters(self) -> dict[str, Array]:
        """The differentiable parameters, in order, by name (``"0.weight"``, ``"0.bias"``, …)."""
        return {f"{i}.{k}": v for i, layer in enumerate(self.layers) for k, v in layer.parameters().items()}

    def arrays(self) -> list[tuple[str, Array]]:
        """Every array the model holds (parameters and targets), named."""
        return [(f"{i}.{k}", v) for i, layer in enumerate(self.layers) for k, v in layer.arrays()]

    def map_arrays(self, fn: Callable[[str, Array], Array]) -> Sequential:
        """A new model of the same layers whose every array is replaced by ``fn(name, array)``.

        Parameters
        ----------
        fn : callable
            Called once per array of :meth:`arrays` (parameters and targets), with its name
            as :meth:`arrays` gives it (``"0.weight"``, ``"2.0.bias"``, ``"4.target"``) and
            the array; returns the replacement, which the layer checks as its constructor
            does (shapes, dtypes).

        Returns
        -------
        Sequential
            A new model; ``self`` and its layers are left unchanged (layers without arrays
            are shared, since layers are immutable).

        Examples
        --------
        >>> import numpy as np, hessarray as ha
        >>> model = ha.Sequential(ha.Dense(np.ones((2, 3)), np.zeros(2)), ha.Tanh(), ha.MSELoss(np.ones(2)))
        >>> half = model.map_arrays(lambda name, a: a.astype(np.float32) if "weight" in name else a)
        >>> [(name, a.dtype.name) for name, a in half.arrays()]
        [('0.weight', 'float32'), ('0.bias', 'float64'), ('2.target', 'float64')]
        >>> model[0].weight.dtype.name
        'float64'
        """
        layers = []
        for i, layer in enumerate(self.layers):
            prefix = f"{i}."
            layers.append(layer.map_arrays(lambda name, a, prefix=prefix: fn(prefix + name, a)))
        return Sequential(*layers)

    def to(self, xp: Any, device: Any = None) -> Sequential:
        """The same model with its arrays in library ``xp`` on ``device``.

        Parameters
        ----------
        xp : module
            ``numpy``, ``cupy``, ``torch``, ``jax.numpy``, ``array_api_strict``, ``dask.array``,
            or their ``array_api_compat`` namespaces (``array_api_compat.torch``, ...).
        device : object, optional
            A device of ``xp``: ``"cpu"``, ``"cuda:0"`` or a ``torch.device`` for torch, a JAX
            device, an ``array_api_strict.Device`` (``Device("device1")`` too), a CuPy device.
            ``None`` is the library's default device (``torch.get_default_device()``, JAX's
            default device, CuPy's current device), also for arrays already in ``xp``.

        Returns
        -------
        Sequential
            A new model; ``self`` is unchanged. Dtypes are kept (integer labels stay integers).
            Arrays move by DLPack where both libraries can share memory, else through a host
            copy, so the new model may share memory with this one: neither changes arrays.

        Raises
        ------
        TypeError
            If ``xp`` is not an array library or namespace (the message names the choices).
        ValueError
            If ``device`` is not a device of ``xp`` (the message lists the valid ones), or
            ``xp`` cannot hold a floating dtype of the model (JAX without 64-bit mode cannot
            hold ``float64``; its integer labels become ``int32`` instead).

        Notes
        -----
        To ``dask.array``, every array becomes one chunk (NumPy and CuPy arrays as they are,
        others through the host), and a Dask model's arrays are kept as they are: nothing is
        computed. From Dask to any other library the arrays are computed, all in one
        ``dask.compute``.

        Examples
        --------
        >>> import numpy as np, torch, hessarray as ha
        >>> model = ha.Sequential(ha.Dense(np.ones((2, 3))), ha.Tanh(), ha.SoftmaxCrossEntropy(np.array([0, 1])))
        >>> on_torch = model.to(torch, device="cpu")
        >>> [(name, a.dtype, a.device) for name, a in on_torch.arrays()]
        [('0.weight', torch.float64, device(type='cpu')), ('2.target', torch.int64, device(type='cpu'))]
        >>> ha.hessian(on_torch, torch.zeros(2, 3, dtype=torch.float64)).shape
        torch.Size([2, 3, 3])
        >>> bool(np.array_equal(on_torch.to(np)[0].weight, model[0].weight))
        True
        """
        moved = move_arrays(self.arrays(), xp, device)
        return self.map_arrays(lambda name, a: moved[name])

    def locate(self, name: str) -> tuple[int, str]:
        """``"2.0.weight" -> (2, "0.weight")``; ``KeyError`` listing valid names if unknown."""
        names = list(self.parameters())
        if name not in names:
            raise KeyError(f"unknown parameter {name!r}; valid names are {names}")
        index, _, rest = name.partition(".")
        return int(index), rest

    def _widths(self, n: int, start: int = 0) -> list[int]:
        widths = [n]
        for i in range(start, len(self.layers)):
            layer = self.layers[i]
            try:
                n = layer.out_width(n)
            except ValueError as exc:
                prev = f"layer {i - 1} ({self.layers[i - 1]!r}) gives" if i > 0 else "the input has"
                raise ValueError(
                    f"layer {i} ({layer!r}) {exc}, but {prev} width {widths[-1]} (shape (batch, {widths[-1]}))"
                ) from None
            widths.append(n)
        return widths

    def output_width(self, d: int) -> int:
        """Width of the output for inputs of width ``d``; ``ValueError`` on a mismatch."""
        if d not in self._widths_seen:
            self._widths_seen[d] = self._widths(d)[-1]
        return self._widths_seen[d]

    # -- evaluation -----------------------------------------------------------------------------
    def prepare(self, x: Any) -> tuple[Any, Array, bool]:
        """Check ``x`` against the model; return ``(xp, x as (B, d), whether x was 1-D)``."""
        # The model's arrays never change, so one check per input type and device is enough.
        key = _delegation.input_key(x)  # NumPy: the dtype is part of the key, no dtype check per call
        typed = key is not None
        if not typed:
            key = (type(x), str(device(x)) if is_array_api_obj(x) else None)
        xp = self._checked.get(key)
        if xp is None:
            xp = check_inputs(x, self.arrays())
            self._checked[key] = xp
        elif not typed and not xp.isdtype(x.dtype, "real floating"):
            check_inputs(x, [])  # raises the dtype error
        if x.ndim not in (1, 2):
            raise ValueError(f"x must have shape (batch, d) or (d,), got shape {tuple(x.shape)}")
        single = x.ndim == 1
        x2 = x[None, :] if single else x
        self.output_width(x2.shape[1])
        for layer in self._batch_checked:
            layer.check_batch(x2.shape[0])
        return xp, x2, single

    def __call__(self, x: Array) -> Array:
        """The model's output, ``(batch,)`` + ``o`` (``o = ()`` for scalar models)."""
        _, x2, single = self.prepare(x)
        _, y = forward_chain(self.layers, x2)
        if self.scalar_output:
            y = y[:, 0]
        return y[0, ...] if single else y
