"""A fused cosine top-k for CUDA, in Triton: scores and selection in one pass, no score matrix in memory.

Each program takes BLOCK_Q queries and one slice ("split") of the corpus. It walks the slice in tiles of BLOCK_C
rows, computes the (BLOCK_Q, BLOCK_C) tile of dot products on the tensor cores, scales it by the inverse norms, and
folds it into a running top-k held in registers. Once the running lists are full, almost no score of a tile beats a
row's k-th best, so folding costs one comparison per score. The splits' lists are merged by PyTorch. With FLATTEN
(Triton 3.9 and later), Triton turns the two loops (corpus tiles, and slices of the dimension within a tile) into
one, so that the next tile's rows are loaded while this one is folded; without it, the loads are pipelined within a
tile only, and each tile begins by waiting for its first slice. With HELD_SLICES, the queries are loaded once and
held, and the loop over corpus tiles is the only one: its loads are pipelined across tiles.

Equal scores go to the lower corpus id, as in the PyTorch path: a program scans its slice in increasing id
order, takes a tile's candidates best first (the lower column first among equals), admits only scores strictly
above the k-th best, and evicts the highest id among the slots that hold the k-th best score. What this
guarantees: among scores that are equal as this kernel computes them, the lower id wins. Scores that are equal
in exact arithmetic (a duplicated row, say) can differ in the last bit between this kernel and a BLAS matrix
product, which sum in another order; so the two paths agree exactly only where the scores themselves do.
"""

import re
import warnings

import torch

try:
    import triton
    import triton.language as tl
    from triton.runtime.errors import OutOfResources
except ImportError:  # CPU builds of PyTorch come without Triton
    triton = None

LARGEST_K = 128  # above this the running lists no longer fit in registers; the PyTorch path takes over
# Said, not left to Triton's default, which 3.9 warns turns to off in 3.10 (fusing a product and a sum into one
# rounding). Off: outside the tensor-core products the kernel has no product followed by a sum, so fusing would
# change nothing (compiled for sm_90 by Triton 3.9 both ways: the same instructions, no fma); said, the kernel does
# not depend on a Triton's default.
COMPILER_OPTIONS = {"enable_fp_fusion": False}


def _version(text: str) -> tuple[int, int]:
    major, minor = re.match(r"(\d+)\.(\d+)", text).groups()
    return int(major), int(minor)


# What each Triton release compiles, found by compiling the kernel for sm_90 with each release's wheel
# (benchmarks/kernel_registers.py): 3.3 refuses the whole kernel (the `if` around the fold sits in the tile loop and
# calls functions that return, which 3.3 takes for a return inside a loop); 3.4 to 3.8 compile it, but their loop
# fusion fails on it with FLATTEN; 3.9 compiles every setting. With a Triton older than 3.4 the first search on a
# GPU warns and all take the PyTorch path.
TRITON_VERSION = _version(triton.__version__) if triton is not None else None
TRITON_TOO_OLD = triton is not None and TRITON_VERSION < (3, 4)
FLATTEN_COMPILES = triton is not None and TRITON_VERSION >= (3, 9)

if triton is not None:
    @triton.jit
    def _query_slice(query_ptr, q_rows, q_valid, d, dim):
        """Dimensions `d` of the queries `q_rows`: (BLOCK_Q, BLOCK_D)."""
        return tl.load(query_ptr + q_rows.to(tl.int64)[:, None] * dim + d[None, :],
                       mask=q_valid[:, None] & (d[None, :] < dim), other=0.0)

    @triton.jit
    def _corpus_slice(corpus_ptr, c_rows, c_valid, d, dim):
        """Dimensions `d` of the corpus rows `c_rows`, transposed: (BLOCK_D, BLOCK_C)."""
        return tl.load(corpus_ptr + c_rows.to(tl.int64)[None, :] * dim + d[:, None],
                       mask=c_valid[None, :] & (d[:, None] < dim), other=0.0)

    @triton.jit
    def _cosine_top_k_kernel(query_ptr, corpus_ptr, query_scale_ptr, corpus_scale_ptr, out_scores_ptr, out_ids_ptr,
                             n_queries, n_corpus, dim, rows_per_split, n_splits, self_offset,
                             K_PAD: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_C: tl.constexpr,
                             BLOCK_D: tl.constexpr, EXCLUDE_SELF: tl.constexpr, FP32_PRECISION: tl.constexpr,
                             FLATTEN: tl.constexpr, HELD_SLICES: tl.constexpr):
        q_block, split = tl.program_id(0), tl.program_id(1)
        q_rows = q_block * BLOCK_Q + tl.arange(0, BLOCK_Q)
        q_valid = q_rows < n_queries
        q_scale = tl.load(query_scale_ptr + q_rows, mask=q_valid, other=0.0)
        slots = tl.arange(0, K_PAD)
        tile_columns = tl.arange(0, BLOCK_C)
        # this program's running lists, in registers from their initial values in its slice of the output to
        # their final ones (kept in memory between tiles, they need a barrier after each write, and a barrier
        # stops Triton from pipelining the loads across tiles)
        lists = (q_rows.to(tl.int64)[:, None] * n_splits + split) * K_PAD + slots[None, :]  # (BLOCK_Q, K_PAD)
        best = tl.load(out_scores_ptr + lists, mask=q_valid[:, None], other=float("inf"))
        best_ids = tl.load(out_ids_ptr + lists, mask=q_valid[:, None], other=0)
        kth_best = tl.full((BLOCK_Q,), float("-inf"), tl.float32)
        if HELD_SLICES:  # the queries loaded once (into shared memory), not again for every corpus tile
            held = ()
            for i in tl.static_range(HELD_SLICES):
                held = held + (_query_slice(query_ptr, q_rows, q_valid, i * BLOCK_D + tl.arange(0, BLOCK_D), dim),)

        c_begin = split * rows_per_split
        c_end = tl.minimum(c_begin + rows_per_split, n_corpus)
        for c_start in tl.range(c_begin, c_end, BLOCK_C, flatten=FLATTEN):
            c_rows = c_start + tile_columns
            c_valid = c_rows < c_end
            # fp32 in: "tf32x3" products (fp32's precision to about 1e-7) or "ieee"; None for bf16 and fp16
            dots = tl.zeros((BLOCK_Q, BLOCK_C), tl.float32)
            if HELD_SLICES:
                for i in tl.static_range(HELD_SLICES):
                    c = _corpus_slice(corpus_ptr, c_rows, c_valid, i * BLOCK_D + tl.arange(0, BLOCK_D), dim)
                    dots = tl.dot(held[i], c, dots, input_precision=FP32_PRECISION)
            else:
                for d_start in range(0, dim, BLOCK_D):
                    d = d_start + tl.arange(0, BLOCK_D)
                    q = _query_slice(query_ptr, q_rows, q_valid, d, dim)
                    dots = tl.dot(q, _corpus_slice(corpus_ptr, c_rows, c_valid, d, dim), dots,
                                  input_precision=FP32_PRECISION)
            c_scale = tl.load(corpus_scale_ptr + c_rows, mask=c_valid, other=0.0)
            scores = dots * q_scale[:, None] * c_scale[None, :]  # (BLOCK_Q, BLOCK_C)
            usable = q_valid[:, None] & c_valid[None, :]
            if EXCLUDE_SELF:
                usable = usable & (q_rows[:, None] + self_offset != c_rows[None, :])
            scores = tl.where(usable, scores, float("-inf"))

            pending = scores > kth_best[:, None]
            # the `if` tests what the while does; but a loop placed directly in the tile loop keeps Triton from
            # pipelining the tile loop's loads (with HELD_SLICES, the only loop they are in)
            if tl.max(pending.to(tl.int32), axis=None) > 0:
                while tl.max(pending.to(tl.int32), axis=None) > 0:
                    candidates = tl.where(pending, scores, float("-inf"))
                    top = tl.max(candidates, axis=1)
                    column = tl.argmax(candidates, axis=1, tie_break_left=True)
                    admitted = top > kth_best
                    at_kth = best == kth_best[:, None]
                    evicted = tl.argmax(tl.where(at_kth, best_ids, -1), axis=1, tie_break_left=True)
                    replace = admitted[:, None] & (slots[None, :] == evicted[:, None])
                    best = tl.where(replace, top[:, None], best)
                    best_ids = tl.where(replace, (c_start + column)[:, None], best_ids)
                    kth_best = tl.min(best, axis=1)
                    pending = pending & (tile_columns[None, :] != column[:, None]) & (scores > kth_best[:, None])
        tl.store(out_scores_ptr + lists, best, mask=q_valid[:, None])
        tl.store(out_ids_ptr + lists, best_ids, mask=q_valid[:, None])


_failure = None  # set when the kernel failed here once (another Triton version, another GPU): not tried again


def disable(error: Exception) -> None:
    global _failure
    _failure = error
    warnings.warn(f"the fused top-k kernel failed ({error!r}); searching with the PyTorch path instead")


def available(tensor: torch.Tensor, k: int) -> bool:
    """Whether the fused kernel can serve a search on `tensor` for the k best."""
    return (triton is not None and _failure is None and tensor.is_cuda and 0 < k <= LARGEST_K
            and tensor.dtype in (torch.float32, torch.bfloat16, torch.float16))


def launch_config(dtype: torch.dtype, k: int) -> dict:
    """Tile sizes and kernel options for a search of the k best in `dtype`.

    Chosen by timing (below). benchmarks/kernel_registers.py compiles the kernel with these settings for sm_90 and
    prints what ptxas reports and whether the loads are pipelined: with Triton 3.9, no spill at k = 10 in fp16 and
    bf16 (64 bytes in fp32), spills from k = 32 as the running lists grow.
    """
    fp32 = dtype == torch.float32
    # measured on an H200 (benchmarks/gpu_check.py --tune-seconds), 10,000 x 1,000,000 x 384, top-10, 2026-11-27:
    # fp16 49 ms with these tiles (54 ms with 128 columns); fp32 as three TF32 products on the tensor cores
    # ("tf32x3": each operand split into a TF32 part and its remainder, the remainders' product dropped) 167 ms,
    # against 394 ms for plain fp32 ("ieee"), the same hits, scores within 3.4e-7 of plain fp32's. Those times were
    # of the running lists kept in memory; in registers, with FLATTEN (pipelined across tiles) or HOLD_QUERIES (see
    # kernel_options) the kernel has not run on a GPU yet: both stay off until the GPU check's tuning has timed
    # them and compared their results (FLATTEN, if chosen, only where FLATTEN_COMPILES)
    block_q, block_c, block_d, stages = (128, 128, 32, 3) if fp32 else (64, 256, 64, 3)
    return dict(K_PAD=max(16, triton.next_power_of_2(k)), BLOCK_Q=block_q, BLOCK_C=block_c, BLOCK_D=block_d,
                FP32_PRECISION="tf32x3" if fp32 else None, FLATTEN=False, HOLD_QUERIES=False, num_warps=8,
                num_stages=stages)


def kernel_options(config: dict, dim: int) -> dict:
    """launch_config's settings as the kernel takes them: HOLD_QUERIES (each program keeps its queries in shared
    memory while it walks its corpus slice, instead of loading them again with every corpus tile: a tile of 128
    queries and 64 corpus rows of 384 fp16 dimensions then reads 48 KB, not 144) becomes HELD_SLICES, the number
    of BLOCK_D slices the queries are held in, or 0. FLATTEN with a Triton that cannot compile it (before 3.9) is a
    RuntimeError."""
    if config["FLATTEN"] and not FLATTEN_COMPILES:
        raise RuntimeError(f"FLATTEN needs Triton 3.9 or newer: the loop fusion of Triton {triton.__version__} "
                           "fails on this kernel")
    options = dict(config)
    options["HELD_SLICES"] = triton.cdiv(dim, options["BLOCK_D"]) if options.pop("HOLD_QUERIES") else 0
    return options


def smaller_setting(config: dict) -> dict | None:
    """The next setting to try where a GPU has too little shared memory per program for `config` (an A100 has 164
    KB, consumer GPUs about 100, 227 on an H100; how much a setting takes is the compiler's to say: held fp32
    queries take twice their size as three TF32 products): the queries streamed instead of held, then fewer
    stages in flight (down to 2), then half the corpus tile, then half the query tile (down to 32 each), then
    half the dimension slice (down to 16). None when there is nothing left to shrink."""
    steps = [("HELD_SLICES", 0, lambda n: 0), ("num_stages", 2, lambda n: n - 1), ("BLOCK_C", 32, lambda n: n // 2),
             ("BLOCK_Q", 32, lambda n: n // 2), ("BLOCK_D", 16, lambda n: n // 2)]
    for name, least, shrink in steps:
        if config[name] > least:
            return {**config, name: shrink(config[name])}
    return None


_fitted = {}  # (device, the setting asked for) -> the setting that fits that GPU's shared memory


class SteppedDown(UserWarning):
    """The kernel ran with a smaller setting than the one asked for (see smaller_setting): the tuning and the GPU
    tests, which must run the setting itself, turn it into an error."""


def cosine_top_k(queries: torch.Tensor, corpus: torch.Tensor, k: int, self_offset: int | None = None,
                 n_splits: int | None = None, normalize: bool = True, config: dict | None = None):
    """Candidates for each query's k best corpus rows by cosine similarity: (scores (Q, S * k) float32, ids (Q, S * k)
    int64), the k best of each of S corpus slices, in no order; search.py merges them.

    `queries` and `corpus` share one dtype (fp32, bf16 or fp16); products accumulate in fp32; fp32 inputs
    are multiplied as three TF32 products (launch_config), which keeps fp32's precision to about 1e-7.
    With `self_offset`, query row i never matches corpus row i + self_offset (the same sentence). `n_splits`
    overrides the number of corpus slices (the tests use it to check the merge of several). With
    `normalize=False` the scores are the dot products themselves. `config` overrides launch_config (for tuning).
    """
    if TRITON_TOO_OLD:
        raise RuntimeError(f"Triton {triton.__version__} is older than 3.4, the first that compiles this kernel")
    queries, corpus = queries.contiguous(), corpus.contiguous()
    n_queries, dim = queries.shape
    if normalize:  # cosine: each dot product times both inverse norms (clamped at the eps of F.normalize)
        # summed in fp32 without an fp32 copy of the corpus (1.5 GB for 1,000,000 x 384 in fp16)
        query_scale = 1 / torch.linalg.vector_norm(queries, dim=1, dtype=torch.float32).clamp_min(1e-12)
        corpus_scale = 1 / torch.linalg.vector_norm(corpus, dim=1, dtype=torch.float32).clamp_min(1e-12)
    else:  # the dot product itself
        query_scale = torch.ones(len(queries), device=queries.device)
        corpus_scale = torch.ones(len(corpus), device=corpus.device)
    asked = kernel_options({**launch_config(queries.dtype, k), **(config or {})}, dim)
    key = (queries.device, tuple(sorted(asked.items())))
    config = _fitted.get(key, asked)
    while True:
        try:
            found = _launch(queries, corpus, query_scale, corpus_scale, k, self_offset, n_splits, config)
        except OutOfResources as error:  # compiled, but more shared memory than this GPU gives a program
            smaller = smaller_setting(config) if error.name == "shared memory" else None
            if smaller is None:
                raise
            change = ", ".join(f"{name} {config[name]} -> {smaller[name]}" for name in smaller
                               if smaller[name] != config[name])
            warnings.warn(f"the fused top-k kernel's setting needs {error.required} bytes of shared memory per "
                          f"program and this GPU has {error.limit}: trying {change}", SteppedDown)
            config = smaller
        else:
            _fitted[key] = config
            return found


def _launch(queries, corpus, query_scale, corpus_scale, k: int, self_offset, n_splits, config: dict):
    """One launch of the kernel with `config`: the candidates as cosine_top_k returns them."""
    n_queries, dim = queries.shape
    q_blocks = triton.cdiv(n_queries, config["BLOCK_Q"])
    # enough programs to fill the GPU a few times over; consecutive programs share a split, so its corpus
    # tiles are read from L2 by all the query blocks that run at once
    processors = torch.cuda.get_device_properties(queries.device).multi_processor_count if queries.is_cuda else 1
    if n_splits is None:
        n_splits = max(1, min(triton.cdiv(4 * processors, q_blocks), triton.cdiv(len(corpus), 8 * config["BLOCK_C"])))
    rows_per_split = triton.cdiv(len(corpus), n_splits)
    # the running lists: k slots at -inf (to be filled) and padding at +inf (never the k-th best, never evicted)
    scores = torch.full((n_queries, n_splits, config["K_PAD"]), float("-inf"), device=queries.device)
    scores[..., k:] = float("inf")
    ids = torch.full((n_queries, n_splits, config["K_PAD"]), 2**31 - 1, dtype=torch.int32, device=queries.device)
    _cosine_top_k_kernel[(q_blocks, n_splits)](
        queries, corpus, query_scale, corpus_scale, scores, ids, n_queries, len(corpus), dim, rows_per_split,
        n_splits, self_offset or 0, EXCLUDE_SELF=self_offset is not None, **config, **COMPILER_OPTIONS)
    return scores[..., :k].reshape(n_queries, -1), ids[..., :k].reshape(n_queries, -1).long()
