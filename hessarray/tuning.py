"""The knobs: every tuning constant of hessarray, in one place. Change at your own risk.

None of these changes a result beyond rounding; they trade speed against memory, or one
kernel against another, and were set by measurement on the benchmark machine. The numbers
behind each value are in ``docs/benchmarks.md`` ("Why the tuning constants have their
values"); each comment here says only what the constant trades.

The modules that use a constant import it when hessarray is imported (``from ..tuning import
TILE``), so assigning ``hessarray.tuning.TILE`` at run time changes nothing: edit this file to
try another value, and re-run the benchmarks (``asv_bench/compare.py``) and the tests. Switches
that turn a path on or off are not tuning constants and live with their code
(``hessarray._numpy.ENABLED``, ``hessarray._dask.SERIAL_TASKS``, the ``HESSARRAY_*`` environment
variables).
"""

# -- blocks of samples on CPUs (engine/plan.py) ----------------------------------------------------

#: Bytes of working state per block of the portable passes on CPUs: blocks that stay in cache
#: against fewer, larger blocks (less per-block call overhead).
BLOCK_BYTES = 6 << 20

#: Fewest samples per block on CPUs, whatever :data:`BLOCK_BYTES` allows: below it each block's
#: call overhead outweighs its cache savings.
MIN_BLOCK = 16

#: Fewest samples per block worth handing to another thread when the batch fits in one block:
#: a second core against the cost of one more block.
MIN_SPLIT = 64

# -- choice of mode (engine/plan.py) ---------------------------------------------------------------

#: ``mode="auto"`` takes the reverse mode only when its FLOP estimate is this many times smaller
#: than the forward mode's: the forward mode's GEMMs over all samples run faster per
#: multiply-add than the reverse mode's passes over per-sample Hessians.
REVERSE_ADVANTAGE = 1.15

# -- memory budget (engine/budget.py, engine/plan.py, parameters.py) -------------------------------

#: Share of the accelerator's free memory a call may hold by default: the rest is left for the
#: caller's own arrays, the outputs and the allocator's fragmentation.
DEVICE_SHARE = 0.5

#: Default budget where free memory is not known or not a hard limit (CPUs): fixed rather than
#: measured, since host memory is shared and swaps rather than fails; it only bounds very wide
#: inputs, as cache-sized blocks stay far below it.
CPU_BYTES = 1 << 30

#: The working-set estimate is this many quarters of the plain count of a block's arrays:
#: headroom for temporaries the count misses, against smaller blocks than needed.
WORKING_SET_QUARTERS = 5

#: Default limit on the ``(P, P)`` matrix of ``blocks="full"`` and ``flat=True`` (an output,
#: which ``max_memory`` does not bound): refuse a huge allocation rather than start one.
MAX_BYTES = 2 << 30

#: Unit directions per batch of parameter-space products when the full ``(P, P)`` matrix is
#: assembled: fewer passes over the batch against a larger working set per pass.
FULL_MATRIX_COLUMNS = 256

# -- contractions of the portable forward mode (engine/forward.py, layers/dense.py) ----------------

#: Up to this many directions a factor triple's ``k²`` entries are broadcast dot products;
#: beyond it one small matrix product per sample (BLAS) is faster.
SMALL_K = 2

#: From this many directions (NumPy, float32, one output) the symmetric curvature term is formed
#: as two narrower per-sample products and mirrored: fewer products against narrower GEMMs.
SPLIT_K = 32

#: Columns of the first of those two products (:data:`SPLIT_K`).
SPLIT_COLUMNS = 16

#: NumPy weights with at most this many entries get a contiguous copy of ``Wᵀ`` per call
#: (OpenBLAS multiplies small matrices faster by a contiguous operand); larger ones stay views,
#: with no copy per call.
CONTIGUOUS_WEIGHT_SIZE = 1024

# -- compiled NumPy code (numba: _numpy/loops.py, _numpy/network.py) -------------------------------

#: Most tangent directions whose forward-mode curvature is contracted in a fused loop
#: (``k(k+1)/2`` dot products per sample); beyond it per-sample BLAS products win.
MAX_K = 24

#: Most tangent directions whose curvature the compiled network kernel sums by loops
#: (``k(k+1)/2`` dot products per sample); beyond it one BLAS product per sample wins.
LOOP_K = 64

#: Samples per tile of the compiled network kernel (the most): a tile's values, adjoints and
#: tangents stay in a core's L2 cache, against more, smaller GEMMs.
TILE = 64

#: Bytes of a compiled tile's buffers (values, adjoints, tangents, φ', φ'' of every layer) the
#: tile size is cut to, for many directions or wide layers: a tile that stays in a core's L2
#: cache, against smaller GEMMs.
TILE_BYTES = 3 << 20

#: Fewest samples per compiled tile, whatever :data:`TILE_BYTES` allows: below it a GEMM's rows
#: are too few for BLAS.
MIN_TILE = 8

#: Bytes of per-sample temporaries (the Jacobian; Hessians mapped back from narrowed seeds) one
#: compiled call holds at most where only the Hessian's diagonal or trace is returned: calls of
#: whole tiles one after another, never a ``(B, d, d)`` array, against more calls.
REDUCED_BYTES = 16 << 20

#: OpenBLAS runs a GEMM on one thread up to this ``M·N·K`` (its ``SMP_THRESHOLD_MIN`` × 4); a
#: serial kernel call whose tile products exceed it runs under a one-thread BLAS limit, since
#: splitting a tile's product over threads costs more than it gains.
BLAS_THREADED_WORK = 1 << 18

#: Rows of a tile's products (samples × directions) from which the compiled kernel multiplies by
#: weights' transposes copied per call: below it numba's product with a transposed view is as
#: fast, and the copies would cost more than they gain.
TRANSPOSED_ROWS = 64

# -- glibc's allocator on CPUs (_numpy/allocator.py) ----------------------------------------------

#: Arrays up to this size come from the heap, not from ``mmap``: freed temporaries are reused
#: rather than faulted in again, against memory held by the process.
MMAP_THRESHOLD = 32 << 20

#: Freed memory at the top of the heap kept for the next allocation, up to this much.
TRIM_THRESHOLD = 128 << 20

#: Extra memory asked of the system each time the heap grows.
TOP_PAD = 64 << 20

# -- Dask (_dask.py) -------------------------------------------------------------------------------

#: Partial sums added per node of the tree reduction of summed results: a shallower tree against
#: more partials held by one task.
SPLIT_EVERY = 8
