"""Search and mining against brute force (full cos_sim, then a sort by (-score, id)) and against
sentence_transformers.util; the Triton kernel against the PyTorch path, in Triton's interpreter on the CPU."""

import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from sentence_transformers import util

from minisbert.data import distinct_sentences, read_sts_benchmark
from minisbert import search
from minisbert.search import paraphrase_mining, paraphrase_mining_embeddings, semantic_search, top_k_scores
from minisbert.similarity import cos_sim, dot_score, pairwise_cos_sim, pairwise_dot_score

DATA = Path(os.environ.get("MINISBERT_DATA", Path(__file__).parents[1] / "../shared/data")).resolve()


def brute_force(queries, corpus, top_k):
    scores = cos_sim(torch.as_tensor(queries).float(), torch.as_tensor(corpus).float())
    return [sorted(range(len(corpus)), key=lambda i: (-row[i].item(), i))[:top_k] for row in scores]


@pytest.mark.parametrize("n_queries,n_corpus,top_k,query_chunk,corpus_chunk",
                         [(7, 50, 5, 3, 11), (5, 13, 20, 100, 4), (1, 1, 1, 1, 1), (9, 64, 64, 4, 64)])
def test_semantic_search_equals_brute_force_with_duplicates_and_ties(n_queries, n_corpus, top_k, query_chunk, corpus_chunk):
    generator = torch.Generator().manual_seed(n_corpus)
    # corpus rows are multiples of +-e_i: eight directions, so many rows tie, across chunk boundaries, and
    # exactly (each score is one query coordinate times 1, whatever the order of summation)
    axes = torch.randint(0, 4, (n_corpus,), generator=generator)
    scale = torch.tensor([-2.0, -1.0, 0.5, 1.0])[torch.randint(0, 4, (n_corpus,), generator=generator)]
    corpus = torch.zeros(n_corpus, 4).index_put_((torch.arange(n_corpus), axes), scale)
    queries = torch.cat([corpus[:2], torch.randn(n_queries, 4, generator=generator)])[:n_queries]
    results = semantic_search(queries, corpus, top_k=top_k, query_chunk_size=query_chunk, corpus_chunk_size=corpus_chunk)
    expected = brute_force(queries, corpus, top_k)
    assert [[hit["corpus_id"] for hit in row] for row in results] == expected
    full = cos_sim(queries, corpus)
    for q, row in enumerate(results):
        assert [hit["score"] for hit in row] == pytest.approx([full[q, i].item() for i in expected[q]], abs=1e-6)


def test_semantic_search_in_overlapped_query_chunks_gives_the_same_hits(monkeypatch):
    # on a GPU the queries go in chunks (the host builds one chunk's hits while the GPU searches the next): the
    # same chunking here, on the CPU, must give the same lists in the same order
    from minisbert import search

    corpus = tied_vectors(40, seed=6)
    expected = semantic_search(corpus[:11], corpus, top_k=5, corpus_chunk_size=16)
    monkeypatch.setattr(search, "_overlap_chunk", lambda queries: 3)
    assert semantic_search(corpus[:11], corpus, top_k=5, corpus_chunk_size=16) == expected
    assert [[hit["corpus_id"] for hit in row] for row in expected] == brute_force(corpus[:11], corpus, 5)


def test_semantic_search_on_real_embeddings(minilm_folder):
    from minisbert import SentenceTransformer
    texts = ["A man is playing guitar.", "A man plays a guitar.", "A woman is slicing an onion.", "A cat sleeps.",
             "Someone is cutting an onion.", "A man is playing guitar.", "The kitten is asleep."]
    embeddings = SentenceTransformer(minilm_folder).encode(texts)
    results = semantic_search(embeddings[:3], embeddings, top_k=3, corpus_chunk_size=2)
    # texts 0 and 5 are the same: their scores differ only by rounding, so they may come in either order (and
    # either may take the last place), which assert_same_ranking allows for scores within 1e-6
    full = cos_sim(embeddings[:3], embeddings)
    for q, row in enumerate(results):
        assert_same_ranking([(hit["score"], hit["corpus_id"]) for hit in row],
                            [(full[q, i].item(), i) for i in brute_force(embeddings[:3], embeddings, 3)[q]],
                            lambda i: full[q, i].item())
    assert {hit["corpus_id"] for hit in results[0][:2]} == {0, 5}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_semantic_search_accepts_low_precision_inputs(dtype):
    corpus = torch.randn(40, 8, generator=torch.Generator().manual_seed(0))
    results = semantic_search(corpus[:5].to(dtype), corpus.to(dtype), top_k=1, corpus_chunk_size=16)
    assert [row[0]["corpus_id"] for row in results] == [0, 1, 2, 3, 4]


def test_semantic_search_edge_cases():
    corpus = np.eye(3, dtype=np.float32)
    assert semantic_search(corpus, np.zeros((0, 3), dtype=np.float32)) == [[], [], []]
    assert semantic_search(np.zeros((0, 3), dtype=np.float32), corpus) == []
    assert len(semantic_search(corpus, corpus, top_k=10)[0]) == 3
    with pytest.raises(ValueError, match=r"\(3, 3\).*\(2, 4\)"):
        semantic_search(corpus, np.zeros((2, 4)))


def tied_vectors(n: int, seed: int) -> torch.Tensor:
    """Rows along eight directions (+-e_i, scaled): many exact ties, and duplicates."""
    generator = torch.Generator().manual_seed(seed)
    axes = torch.randint(0, 4, (n,), generator=generator)
    scale = torch.tensor([-2.0, -1.0, 0.5, 1.0])[torch.randint(0, 4, (n,), generator=generator)]
    return torch.zeros(n, 4).index_put_((torch.arange(n), axes), scale)


def brute_force_mining(embeddings, top_k, max_pairs, threshold=None):
    scores = cos_sim(torch.as_tensor(embeddings).float(), torch.as_tensor(embeddings).float())
    n = len(scores)
    candidates = set()
    for i in range(n):
        others = sorted((j for j in range(n) if j != i), key=lambda j: (-scores[i, j].item(), j))
        candidates.update((min(i, j), max(i, j)) for j in (others if top_k is None else others[:top_k]))
    pairs = [(scores[i, j].item(), i, j) for i, j in candidates if threshold is None or scores[i, j] >= threshold]
    return [[i, j] for _, i, j in sorted(pairs, key=lambda p: (-p[0], p[1], p[2]))[:max_pairs]]


@pytest.mark.parametrize("n,top_k,max_pairs,threshold,chunk", [(23, 3, 1000, None, 5), (40, 1, 7, None, 16),
                                                               (17, 50, 1000, None, 4), (31, None, 1000, 0.4, 6),
                                                               (31, 2, 1000, 0.9, 7), (2, 5, 5, None, 1)])
def test_paraphrase_mining_equals_brute_force_with_ties(n, top_k, max_pairs, threshold, chunk):
    embeddings = tied_vectors(n, seed=n)
    mined = paraphrase_mining_embeddings(embeddings, top_k=top_k, max_pairs=max_pairs, threshold=threshold,
                                         query_chunk_size=chunk, corpus_chunk_size=chunk + 3)
    assert [pair[1:] for pair in mined] == brute_force_mining(embeddings, top_k, max_pairs, threshold)
    full = cos_sim(embeddings, embeddings)
    assert all(score == pytest.approx(full[i, j].item(), abs=1e-6) for score, i, j in mined)


def test_paraphrase_mining_edge_cases():
    assert paraphrase_mining_embeddings(torch.zeros(0, 4)) == []
    assert paraphrase_mining_embeddings(torch.ones(1, 4)) == []
    with pytest.raises(ValueError, match="threshold"):
        paraphrase_mining_embeddings(torch.ones(3, 4), top_k=None)


def sts_sentences(count: int) -> list[str]:
    return distinct_sentences(read_sts_benchmark(DATA / "stsbenchmark" / "sts-test.csv"))[:count]


@pytest.fixture(scope="module")
def sts_embeddings(minilm_folder):
    from minisbert import SentenceTransformer
    return SentenceTransformer(minilm_folder).encode(sts_sentences(600), convert_to_tensor=True)


def assert_same_ranking(ours: list, theirs: list, score_of):
    """Equal scores (to 1e-6), and the same items in the same places except where scores are within 1e-6:
    sentence-transformers computes them in another order, so near-equal neighbours may swap."""
    assert [score for score, _ in ours] == pytest.approx([score for score, _ in theirs], abs=1e-6)
    for (_, item), (_, other) in zip(ours, theirs):
        assert item == other or abs(score_of(item) - score_of(other)) < 1e-6, (item, other)


def test_search_and_mining_equal_sentence_transformers_on_sts_embeddings(sts_embeddings):
    queries, corpus = sts_embeddings[:50], sts_embeddings
    full = cos_sim(corpus, corpus)
    ours = semantic_search(queries, corpus, top_k=20, query_chunk_size=7, corpus_chunk_size=128)
    theirs = util.semantic_search(queries, corpus, top_k=20)
    for q, (our_row, their_row) in enumerate(zip(ours, theirs)):
        assert_same_ranking([(hit["score"], hit["corpus_id"]) for hit in our_row],
                             [(hit["score"], hit["corpus_id"]) for hit in their_row], lambda i: full[q, i].item())

    ours = paraphrase_mining_embeddings(corpus, top_k=5, max_pairs=300, query_chunk_size=64, corpus_chunk_size=100)
    theirs = util.paraphrase_mining_embeddings(corpus, top_k=5, max_pairs=300)
    assert_same_ranking([(score, (i, j)) for score, i, j in ours], [(score, (i, j)) for score, i, j in theirs],
                        lambda pair: full[pair].item())


def test_paraphrase_mining_of_sentences_equals_mining_their_embeddings(minilm_folder, sts_embeddings):
    from minisbert import SentenceTransformer
    sentences = sts_sentences(40)
    with_model = paraphrase_mining(SentenceTransformer(minilm_folder), sentences, top_k=3, max_pairs=20)
    assert [pair[1:] for pair in with_model] == [
        pair[1:] for pair in paraphrase_mining_embeddings(sts_embeddings[:40], top_k=3, max_pairs=20)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_search_in_every_dtype_equals_brute_force_on_the_same_values(dtype):
    generator = torch.Generator().manual_seed(1)
    corpus = torch.cat([torch.randn(97, 16, generator=generator), tied_vectors(30, seed=2).repeat(1, 4)]).to(dtype)
    queries = torch.cat([corpus[:5], torch.randn(8, 16, generator=generator).to(dtype)])
    scores, ids = top_k_scores(queries, corpus, 9, query_chunk_size=4, corpus_chunk_size=33)
    assert ids.tolist() == brute_force(queries.float(), corpus.float(), 9)
    assert scores.dtype == torch.float32


def test_similarity_functions_equal_sentence_transformers():
    generator = torch.Generator().manual_seed(3)
    a, b = torch.randn(6, 8, generator=generator), torch.randn(6, 8, generator=generator)
    for ours, theirs in [(cos_sim, util.cos_sim), (dot_score, util.dot_score),
                         (pairwise_cos_sim, util.pairwise_cos_sim), (pairwise_dot_score, util.pairwise_dot_score)]:
        assert torch.allclose(ours(a.numpy(), b.numpy()), theirs(a, b), atol=1e-6), ours.__name__
        assert ours(a.half(), b.half()).dtype == torch.float16
    with pytest.raises(ValueError, match=r"\(6, 8\).*\(5, 8\)"):
        pairwise_cos_sim(a, b[:5])


KERNEL_CHECK = """
import sys
import numpy as np
import triton.language as tl
from triton.runtime import interpreter

# The interpreter keeps bf16 values as their 16-bit patterns and would multiply those as integers in tl.dot:
# widen them to fp32 first, which is exact (the upper half of an fp32), as the tensor cores' products are.
dot = interpreter.InterpreterBuilder.create_dot
def widen(handle):
    if handle.dtype.scalar != tl.bfloat16:
        return handle
    return interpreter.TensorHandle((handle.data.astype(np.uint32) << 16).view(np.float32), tl.float32)
interpreter.InterpreterBuilder.create_dot = lambda self, a, b, *rest: dot(self, widen(a), widen(b), *rest)

sys.path.insert(0, sys.argv[1])
import kernel_cases
from minisbert import topk_kernel
held = {"HOLD_QUERIES": True, "BLOCK_D": 16}  # the queries held for the whole corpus slice, in 1 to 5 slices
for case in kernel_cases.CASES:
    kernel_cases.check(case)
    dtype, dim = case[5], case[2]
    assert topk_kernel.kernel_options({**topk_kernel.launch_config(dtype, case[3]), **held}, dim)["HELD_SLICES"]
    kernel_cases.check(case, config=held)
print("kernel equals the PyTorch path and brute force")
"""


def test_fused_kernel_equals_pytorch_path_in_triton_interpreter():
    pytest.importorskip("triton")
    from minisbert.topk_kernel import TRITON_TOO_OLD

    if TRITON_TOO_OLD:
        pytest.skip("this Triton is refused for the kernel (see topk_kernel.TRITON_TOO_OLD)")
    result = subprocess.run([sys.executable, "-c", KERNEL_CHECK, str(Path(__file__).parent)], capture_output=True,
                            text=True, timeout=600, env={**os.environ, "TRITON_INTERPRET": "1"})
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.parametrize("dtype,k,overrides", [(torch.float32, 10, {}), (torch.float32, 10, {"FP32_PRECISION": "ieee"}),
                                               (torch.bfloat16, 10, {}), (torch.float16, 128, {}),
                                               (torch.float16, 10, {"FLATTEN": True}),
                                               (torch.float32, 10, {"FLATTEN": True}),
                                               (torch.float16, 10, {"HOLD_QUERIES": True, "BLOCK_Q": 128, "BLOCK_C": 64,
                                                                    "BLOCK_D": 128, "num_stages": 2})])
def test_fused_kernel_compiles_for_hopper_without_a_gpu(dtype, k, overrides):
    # The interpreter runs the kernel as Python, so it accepts what the GPU compiler refuses (an `if` on a string
    # constexpr did, on the H200): compile it for sm_90 here, with the settings the search launches it with. And
    # its loads must be pipelined (a barrier in the loop, say, stops that, and every tile waits for its loads).
    pytest.importorskip("triton")
    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    from kernel_registers import compile_for_hopper, pipelined_loads

    from minisbert.topk_kernel import FLATTEN_COMPILES, TRITON_TOO_OLD

    if TRITON_TOO_OLD or (overrides.get("FLATTEN") and not FLATTEN_COMPILES):
        pytest.skip("this Triton is refused for the kernel, or for FLATTEN (see topk_kernel.TRITON_TOO_OLD)")
    compiled = compile_for_hopper(dtype, k, **overrides)
    assert ".target sm_90" in compiled.asm["ptx"]
    assert pipelined_loads(compiled) > 0


def test_held_queries_take_one_slice_per_block_d_of_their_dimensions():
    pytest.importorskip("triton")
    from minisbert.topk_kernel import kernel_options, launch_config

    held = {**launch_config(torch.float16, 10), "HOLD_QUERIES": True, "BLOCK_D": 128}
    assert kernel_options(held, 384)["HELD_SLICES"] == 3
    assert kernel_options(held, 300)["HELD_SLICES"] == 3  # the last slice padded (masked loads)
    assert kernel_options(held, 768)["HELD_SLICES"] == 6
    assert kernel_options({**held, "HOLD_QUERIES": False}, 384)["HELD_SLICES"] == 0
    assert "HOLD_QUERIES" not in kernel_options(held, 384)  # not a kernel argument


def test_a_setting_too_large_for_the_gpus_shared_memory_steps_down_until_one_fits(monkeypatch):
    # Triton compiles any setting and refuses at launch one that needs more shared memory than the GPU gives a
    # program (OutOfResources). A stand-in launch refuses by the bytes of the tiles in flight (what Triton 3.9
    # allocates for streamed tiles exactly, benchmarks/kernel_registers.py; held queries add their own).
    pytest.importorskip("triton")
    from triton.runtime.errors import OutOfResources

    from minisbert import topk_kernel

    limit, tried = 100 * 1024, []  # about a consumer GPU's

    def launch(queries, corpus, query_scale, corpus_scale, k, self_offset, n_splits, config):
        tried.append(config)
        need = config["num_stages"] * (config["BLOCK_Q"] + config["BLOCK_C"]) * config["BLOCK_D"] * 2
        need += config["HELD_SLICES"] * config["BLOCK_Q"] * config["BLOCK_D"] * 2
        if need > limit:
            raise OutOfResources(need, limit, "shared memory")
        return "candidates"

    monkeypatch.setattr(topk_kernel, "_launch", launch)
    monkeypatch.setattr(topk_kernel, "_fitted", {})
    queries, corpus = torch.randn(4, 384).half(), torch.randn(50, 384).half()
    with pytest.warns(topk_kernel.SteppedDown, match=r"needs 122880 bytes .* has 102400: trying num_stages 3 -> 2"):
        assert topk_kernel.cosine_top_k(queries, corpus, 10) == "candidates"  # launch_config's fp16: 120 KB
    assert [config["num_stages"] for config in tried] == [3, 2]
    tried.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the setting that fitted is remembered: no second warning, no second try
        topk_kernel.cosine_top_k(queries, corpus, 10)
    assert [config["num_stages"] for config in tried] == [2]

    held = dict(HOLD_QUERIES=True, BLOCK_Q=128, BLOCK_C=64, BLOCK_D=128, num_stages=2)
    tried.clear()
    with pytest.warns(topk_kernel.SteppedDown, match="HELD_SLICES 3 -> 0"):
        topk_kernel.cosine_top_k(queries, corpus, 10, config=held)
    assert [(config["HELD_SLICES"], config["num_stages"]) for config in tried] == [(3, 2), (0, 2)]

    # the whole way down, then the launch's own error
    limit = 1024
    tried.clear()
    with pytest.warns(UserWarning), pytest.raises(OutOfResources):
        topk_kernel.cosine_top_k(queries, corpus, 10, config={**held, "num_stages": 3})
    assert [(c["HELD_SLICES"], c["num_stages"], c["BLOCK_C"], c["BLOCK_Q"], c["BLOCK_D"]) for c in tried] == [
        (3, 3, 64, 128, 128), (0, 3, 64, 128, 128), (0, 2, 64, 128, 128), (0, 2, 32, 128, 128), (0, 2, 32, 64, 128),
        (0, 2, 32, 32, 128), (0, 2, 32, 32, 64), (0, 2, 32, 32, 32), (0, 2, 32, 32, 16)]

    def out_of_threads(*arguments):
        raise OutOfResources(512, 256, "threads")

    monkeypatch.setattr(topk_kernel, "_launch", out_of_threads)
    with pytest.raises(OutOfResources, match="threads"):  # not a question of shared memory: not retried
        topk_kernel.cosine_top_k(queries, corpus, 10, config={"num_warps": 16})


def test_the_first_smaller_setting_takes_less_shared_memory_as_the_compiler_counts_it():
    # What each setting takes, from Triton compiling the kernel for sm_90: one step down from launch_config's fp16
    # setting (120 KB) and from held queries (192 KB) must fit a consumer GPU's 99 KB.
    pytest.importorskip("triton")
    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    from kernel_registers import DIM, compile_with_options

    from minisbert.topk_kernel import kernel_options, launch_config, smaller_setting

    held = dict(HOLD_QUERIES=True, BLOCK_Q=128, BLOCK_C=64, BLOCK_D=128, num_stages=2)
    for overrides in [{}, held]:
        options = kernel_options({**launch_config(torch.float16, 10), **overrides}, DIM)
        before = compile_with_options(torch.float16, options).metadata.shared
        after = compile_with_options(torch.float16, smaller_setting(options)).metadata.shared
        assert after < before and after <= 99 * 1024, (overrides, before, after)


def test_a_kernel_failure_warns_once_and_falls_back_to_the_pytorch_path(monkeypatch):
    from minisbert import topk_kernel

    def broken(*args, **options):
        raise RuntimeError("no such GPU feature")

    monkeypatch.setattr(topk_kernel, "_failure", None)
    monkeypatch.setattr(topk_kernel, "triton", object())
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
    monkeypatch.setattr(topk_kernel, "cosine_top_k", broken)
    corpus = tied_vectors(30, seed=4)
    with pytest.warns(UserWarning, match="no such GPU feature"):
        results = semantic_search(corpus[:3], corpus, top_k=4, corpus_chunk_size=7)
    assert [[hit["corpus_id"] for hit in row] for row in results] == brute_force(corpus[:3], corpus, 4)
    assert not topk_kernel.available(corpus, 4)


def test_a_triton_older_than_3_4_is_refused_with_its_version(monkeypatch):
    # caught by the search, which warns once with this message and takes the PyTorch path (test above)
    pytest.importorskip("triton")
    from minisbert import topk_kernel

    monkeypatch.setattr(topk_kernel, "TRITON_TOO_OLD", True)
    corpus = tied_vectors(30, seed=4)
    with pytest.raises(RuntimeError, match=r"Triton .* is older than 3\.4"):
        topk_kernel.cosine_top_k(corpus[:3], corpus, 4)


def test_flatten_is_refused_with_the_version_of_a_triton_that_cannot_compile_it(monkeypatch):
    pytest.importorskip("triton")
    from minisbert import topk_kernel

    monkeypatch.setattr(topk_kernel, "FLATTEN_COMPILES", False)
    monkeypatch.setattr(topk_kernel, "TRITON_TOO_OLD", False)
    corpus = tied_vectors(30, seed=4)
    with pytest.raises(RuntimeError, match=r"FLATTEN needs Triton 3\.9 or newer: .* Triton \d"):
        topk_kernel.cosine_top_k(corpus[:3], corpus, 4, config={"FLATTEN": True})
    # versions compare as numbers: 3.10 is newer than 3.9
    assert [topk_kernel._version(v) >= (3, 9) for v in ("3.8.0", "3.9.0", "3.10.1", "3.9.0+git1a2b3c")] == [
        False, True, True, True]


@pytest.mark.parametrize("call,message", [
    (lambda e: semantic_search(e, e, top_k=0), "top_k must be a positive integer, not 0"),
    (lambda e: semantic_search(e, e, query_chunk_size=2.5), "query_chunk_size must be a positive integer"),
    (lambda e: paraphrase_mining_embeddings(e, max_pairs=-1), "max_pairs must be a positive integer"),
    (lambda e: paraphrase_mining_embeddings(e, corpus_chunk_size=0), "corpus_chunk_size must be a positive integer"),
    (lambda e: semantic_search(e[None], e), r"query_embeddings: expected a 1-D or 2-D array .* shape \(1, 6, 4\)"),
    (lambda e: semantic_search(["a text"], e), "query_embeddings: expected embeddings .* got text"),
    (lambda e: cos_sim("a text", e), "cos_sim: a: expected embeddings"),
])
def test_bad_search_arguments_are_clear_errors(call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call(tied_vectors(6, seed=5))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_or_infinite_embeddings_are_refused_with_their_row(bad):
    corpus = tied_vectors(6, seed=5)
    corpus[4, 1] = bad
    with pytest.raises(ValueError, match="corpus_embeddings: row 4 holds NaN or infinite values"):
        semantic_search(corpus[:2], corpus)
    with pytest.raises(ValueError, match="embeddings: row 4 holds NaN"):
        paraphrase_mining_embeddings(corpus)


def test_the_losses_and_similarity_functions_do_not_import_triton():
    code = "import sys, minisbert.losses, minisbert; print([m for m in ('triton', 'minisbert.topk_kernel') if m in sys.modules])"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr


@pytest.mark.parametrize("collecting", [True, False])
def test_search_and_mining_leave_the_garbage_collector_as_they_found_it(collecting):
    # both turn the collector off while they build their results; an error inside must not leave it off either
    import gc
    embeddings = torch.randn(30, 8)
    was = gc.isenabled()
    try:
        (gc.enable if collecting else gc.disable)()
        assert len(semantic_search(embeddings[:5], embeddings, top_k=3)) == 5
        assert gc.isenabled() == collecting
        assert len(paraphrase_mining_embeddings(embeddings, top_k=2)) > 0
        assert gc.isenabled() == collecting
        with pytest.raises(RuntimeError, match="stop"), search._no_garbage_collection():
            raise RuntimeError("stop")
        assert gc.isenabled() == collecting
    finally:
        (gc.enable if was else gc.disable)()


def test_building_search_results_sets_off_no_garbage_collection():
    # 200,000 new dicts would set off hundreds of collections (each 700 new containers), all finding nothing
    import gc
    collections = []

    def count(phase, info):
        collections.append(phase)
    found = search._Hits(torch.rand(20_000, 10), torch.randint(0, 10**6, (20_000, 10)))
    gc.callbacks.append(count)
    try:
        hits = found.as_dicts()
    finally:
        gc.callbacks.remove(count)
    # (at most one, set off by what the call allocates before the collector is turned off)
    assert len(hits) == 20_000 and collections.count("start") <= 1, collections.count("start")
