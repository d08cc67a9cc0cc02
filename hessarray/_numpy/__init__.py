"""Everything that runs on NumPy alone: compiled kernels (numba), in-place loops, the
allocator's settings. Reached only through :mod:`hessarray._delegation` and the executor
registry (:mod:`hessarray.engine.executors`); the portable modules never import it.

``numba`` is optional (the ``fast`` extra). The compiled code runs only where it is
importable and ``HESSARRAY_NUMBA`` was not ``0``/``false``/``no``/``off`` when hessarray was
imported (:data:`ENABLED`).
"""

from __future__ import annotations

import os

import numpy

try:  # optional: the ``fast`` extra
    import numba
except ImportError:  # pragma: no cover - exercised where numba is absent
    numba = None

#: The dtypes the compiled code serves.
FLOATS = (numpy.dtype(numpy.float32), numpy.dtype(numpy.float64))


def _from_environment() -> bool:
    value = os.environ.get("HESSARRAY_NUMBA", "1").strip().lower()
    return numba is not None and value not in ("0", "false", "no", "off")


#: Whether the compiled code may run: numba is importable and ``HESSARRAY_NUMBA`` was not
#: ``0``/``false``/``no``/``off`` when hessarray was imported. (Read once: a check per call
#: would cost more than a kernel on small blocks. Tests switch it by assignment.)
ENABLED = _from_environment()
