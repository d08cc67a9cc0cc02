"""The kernel's views without reference counts (:mod:`hessarray._numpy.views`)."""

from __future__ import annotations

import numpy as np
import pytest

numba = pytest.importorskip("numba")

from hessarray._numpy.views import view  # noqa: E402


@numba.njit(cache=True)
def _views(buf, row, start, n):  # pragma: no cover - compiled
    flat = view(buf, row, start, (3 * n,))
    rows = view(buf, row, start, (3, n))
    cube = view(buf, row, start, (3, 1, n))
    rows[1, 0] += 1  # a view writes into the buffer
    return flat.copy(), rows.copy(), cube.copy(), rows.strides, rows.flags.c_contiguous


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize(("row", "start"), [(0, 0), (2, 5), (3, 17)])
def test_view_is_the_slice_reshaped(dtype, row, start):
    buf = np.arange(4 * 40, dtype=dtype).reshape(4, 40)
    want = buf.copy()
    want[row, start + 4] += 1
    flat, rows, cube, strides, contiguous = _views(buf, row, start, 4)
    np.testing.assert_array_equal(buf, want)
    part = want[row, start : start + 12]
    np.testing.assert_array_equal(flat, part)
    np.testing.assert_array_equal(rows, part.reshape(3, 4))
    np.testing.assert_array_equal(cube, part.reshape(3, 1, 4))
    assert strides == (4 * buf.itemsize, buf.itemsize) and contiguous
