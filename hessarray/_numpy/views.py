"""Views of the compiled kernel's own buffers that cost no reference count (numba).

numba gives every slice and reshape of an array a reference to its owner: an atomic increment
and decrement, and a call to check the layout for each reshape. The network kernel
(:mod:`.network`) takes several views per instruction and tile (the cost is measured in
``docs/benchmarks.md``). :func:`view` makes a C-contiguous view of a stretch of one
row of a 2-D buffer directly, without an owner: it is valid only while the buffer is, so it is
taken only of buffers the kernel allocates and holds for the whole call, and never returned.
"""

from __future__ import annotations

from . import numba

view = None

if numba is not None:
    from llvmlite import ir
    from numba.core import cgutils
    from numba.core import types as nbtypes
    from numba.extending import intrinsic

    @intrinsic
    def view(typingctx, buf, row, start, shape):  # pragma: no cover - compiled
        """``buf[row, start : start + prod(shape)].reshape(shape)``, C-contiguous, without a
        reference to ``buf`` (which must outlive it) and unchecked: ``buf`` a 2-D C-contiguous
        array, ``shape`` a tuple of integers."""
        if not (isinstance(buf, nbtypes.Array) and buf.ndim == 2 and buf.layout == "C"):
            return None
        if not (isinstance(shape, nbtypes.BaseTuple) and all(isinstance(t, nbtypes.Integer) for t in shape.types)):
            return None
        ndim = len(shape.types)

        def codegen(context, builder, signature, args):
            src = context.make_array(signature.args[0])(context, builder, args[0])
            row_at = context.cast(builder, args[1], signature.args[1], nbtypes.intp)
            start_at = context.cast(builder, args[2], signature.args[2], nbtypes.intp)
            dims = [
                context.cast(builder, d, t, nbtypes.intp)
                for d, t in zip(cgutils.unpack_tuple(builder, args[3], ndim), shape.types)
            ]
            size = context.get_abi_sizeof(context.get_data_type(signature.args[0].dtype))
            itemsize = context.get_constant(nbtypes.intp, size)
            offset = builder.add(
                builder.mul(row_at, builder.extract_value(src.strides, 0)), builder.mul(start_at, itemsize)
            )
            raw = builder.bitcast(src.data, ir.IntType(8).as_pointer())
            data = builder.bitcast(builder.gep(raw, [offset]), src.data.type)
            strides = [itemsize]
            for d in reversed(dims[1:]):
                strides.insert(0, builder.mul(strides[0], d))
            out = context.make_array(signature.return_type)(context, builder)
            context.populate_array(
                out,
                data=data,
                shape=cgutils.pack_array(builder, dims),
                strides=cgutils.pack_array(builder, strides),
                itemsize=itemsize,
                meminfo=None,
            )
            return out._getvalue()

        return nbtypes.Array(buf.dtype, ndim, "C")(buf, row, start, shape), codegen
