"""The GPU measurements, against sentence-transformers in the same run: encoding, search, mining, training steps.

    bash benchmarks/gpu_check.sh                   # on the GPU machine: the CUDA tests, then this script
    python benchmarks/gpu_check.py --device cpu --quick   # to try the script out on a CPU, at tiny sizes

The models have the shapes of all-MiniLM-L6-v2 and bert-base with random weights, built here (speed depends on
shapes, not values; the 91 MB real weights cannot travel to the GPU machine). The sentences and the tokenizer come
from --assets (benchmarks/gpu_prepare.sh fills it). Each library encodes at several batch sizes and in several
dtypes, and each is reported at its best. Every comparison also checks agreement; a disagreement is listed under
"failures" and makes the exit status 1. The figures go to --json and a table to stdout.
"""

import argparse
import json
import math
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from tokenizers import Tokenizer as FastTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from search_speed import differing, hits, pairs, timed  # noqa: E402
from train_speed import SHAPES, reference_softmax_loss  # noqa: E402
from train_speed import theirs as train_theirs_fit  # noqa: E402

from minisbert import SentenceTransformer, paraphrase_mining_embeddings, semantic_search  # noqa: E402
from minisbert.cuda_graphs import GraphedLoss, GraphedStep  # noqa: E402
from minisbert.data import Example  # noqa: E402
from minisbert.encoder import Encoder, EncoderConfig  # noqa: E402
from minisbert.losses import SoftmaxLoss, tokenize_batch  # noqa: E402
from minisbert.optim import AdamW, parameter_groups, warmup_then_linear_decay  # noqa: E402
from minisbert.tokenize import Tokenizer  # noqa: E402
from minisbert.training import NonFiniteWatch, train_step  # noqa: E402

TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
ALLNLI_PAIRS = 942_069  # the labelled training pairs of SNLI (549,367) and MultiNLI (392,702)


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def random_model(shape: str, assets: Path, folder: Path) -> Path:
    torch.manual_seed(0)
    encoder = Encoder(EncoderConfig(model_type="bert", vocab_size=30522, **SHAPES[shape]))
    tokenizer = Tokenizer(FastTokenizer.from_file(str(assets / "tokenizer.json")), max_seq_length=256, pad_token_id=0)
    SentenceTransformer(encoder=encoder, tokenizer=tokenizer).save(folder)
    return folder


def rate(function, count: int, device: str, warm_up=None) -> tuple[float, object]:
    """(items per second, result) of one timed run, after `warm_up` (a smaller run of the same) or a whole run."""
    (warm_up or function)()
    synchronize(device)
    start = time.perf_counter()
    result = function()
    synchronize(device)
    return count / (time.perf_counter() - start), result


def encoding(args, sentences, folder: Path, shape: str, record: dict, failures: list) -> None:
    from sentence_transformers import SentenceTransformer as Reference

    ours = SentenceTransformer(folder, device=args.device)
    reference = Reference(str(folder), device=args.device)
    reference_fp32 = torch.as_tensor(reference.encode(sentences[:512], batch_size=64))
    results = []
    dtypes = ["fp32", "bf16"] + (["fp16"] if args.device.startswith("cuda") else [])
    for dtype in dtypes:
        for batch_size in args.batch_sizes:
            reference.to(TORCH_DTYPES[dtype])
            theirs, _ = rate(lambda: reference.encode(sentences, batch_size=batch_size), len(sentences), args.device,
                             lambda: reference.encode(sentences[:2 * batch_size], batch_size=batch_size))
            mine, embeddings = rate(lambda: ours.encode(sentences, batch_size=batch_size, dtype=dtype),
                                    len(sentences), args.device,
                                    lambda: ours.encode(sentences[:2 * batch_size], batch_size=batch_size, dtype=dtype))
            agreement = torch.nn.functional.cosine_similarity(torch.as_tensor(embeddings[:512]), reference_fp32).min()
            results.append({"dtype": dtype, "batch_size": batch_size, "sentence_transformers": theirs,
                            "minisbert": mine, "min_cosine_to_st_fp32": agreement.item()})
            threshold = 0.9999 if dtype == "fp32" else 0.99
            if agreement < threshold:
                failures.append(f"encode {shape} {dtype}: cosine to sentence-transformers fp32 {agreement:.5f}")
            print(f"encode {shape:<9} {dtype:<5} batch {batch_size:<5} {theirs:>9.0f} {mine:>9.0f} sent/s "
                  f"{mine / theirs:>6.2f}x  min cosine {agreement:.5f}", flush=True)
    reference.to(torch.float32)
    best_theirs = max(results, key=lambda r: r["sentence_transformers"])
    best_ours = max(results, key=lambda r: r["minisbert"])
    record[f"encode_{shape}"] = {"runs": results, "best_sentence_transformers": best_theirs, "best_minisbert": best_ours,
                                 "ratio_best_to_best": best_ours["minisbert"] / best_theirs["sentence_transformers"]}
    print(f"encode {shape}: best minisbert ({best_ours['dtype']}, {best_ours['batch_size']}) / best "
          f"sentence-transformers ({best_theirs['dtype']}, {best_theirs['batch_size']}): "
          f"{record[f'encode_{shape}']['ratio_best_to_best']:.2f}x", flush=True)


def search_and_mining(args, record: dict, failures: list) -> None:
    from sentence_transformers import util

    from minisbert import topk_kernel

    n_queries, n_corpus, n_mining = (200, 5_000, 2_000) if args.quick else (10_000, 1_000_000, 100_000)
    generator = torch.Generator(device=args.device).manual_seed(0)
    corpus = torch.randn(n_corpus, 384, device=args.device, generator=generator)
    queries = torch.randn(n_queries, 384, device=args.device, generator=generator)
    for dtype, tolerance in (("fp16", 1e-3), ("fp32", 1e-6)):
        if dtype == "fp16" and not args.device.startswith("cuda"):
            continue
        q, c = queries.to(TORCH_DTYPES[dtype]), corpus.to(TORCH_DTYPES[dtype])
        theirs_s, theirs = timed(lambda: util.semantic_search(q, c, top_k=10), args.repeats, args.device)
        ours_s, ours = timed(lambda: semantic_search(q, c, top_k=10), args.repeats, args.device)
        wrong = differing(hits(ours), hits(theirs), tolerance)
        record[f"search_{dtype}"] = {"shape": [n_queries, n_corpus, 384], "top_k": 10, "sentence_transformers_s": theirs_s,
                                     "minisbert_s": ours_s, "ratio": theirs_s / ours_s, "differing_hits": wrong}
        print(f"search {n_queries} x {n_corpus} {dtype}: {theirs_s:.3f} s vs {ours_s:.3f} s, "
              f"{theirs_s / ours_s:.1f}x, differing hits {wrong}", flush=True)
        if wrong:
            failures.append(f"search {dtype}: {wrong} hits differ from sentence-transformers")
        if args.device.startswith("cuda") and topk_kernel._failure is not None:  # the search fell back, with a warning
            failures.append(f"search {dtype}: the fused kernel failed: {topk_kernel._failure!r}")
    embeddings = corpus[:n_mining]
    # sentence-transformers' mining walks every candidate pair in Python (20 s): one run, not warmed up
    theirs_s, theirs = timed(lambda: util.paraphrase_mining_embeddings(embeddings), 1, args.device, warm_up=False)
    ours_s, ours = timed(lambda: paraphrase_mining_embeddings(embeddings), args.repeats, args.device)
    wrong = differing(pairs(ours), pairs(theirs), 1e-6)
    record["mining"] = {"n": n_mining, "sentence_transformers_s": theirs_s, "minisbert_s": ours_s,
                        "ratio": theirs_s / ours_s, "differing_pairs": wrong}
    print(f"mining {n_mining}: {theirs_s:.3f} s vs {ours_s:.3f} s, {theirs_s / ours_s:.1f}x, differing {wrong}",
          flush=True)
    if wrong:
        failures.append(f"mining: {wrong} pairs differ from sentence-transformers")


def train_ours(folder, examples, batch_size, device, dtype, graphs: str | None = None, passes=1,
               host_seconds: list | None = None) -> tuple[list[float], int]:
    """`passes` runs over `examples`: (the seconds of each, the number of CUDA graphs recorded). `graphs`: None for
    eager steps, "forward_backward" for CUDA graphs of forward and backward (GraphedLoss, train.py's default on a
    GPU), "whole_step" for graphs of the whole step (GraphedStep, train.py --graph-whole-step); the first pass
    records one graph per batch shape, and the next ones replay them. `host_seconds` receives, for each pass, when
    the host had queued its last step: near the pass's seconds, the host is what limits; well below, the GPU is."""
    model = SentenceTransformer(folder, device=device)
    loss_fn = SoftmaxLoss(model, num_labels=3)
    optimizer = AdamW(parameter_groups(loss_fn), lr=2e-5)
    autocast = None if dtype == "fp32" else TORCH_DTYPES[dtype]
    scaler = torch.amp.GradScaler("cuda") if dtype == "fp16" else None
    step_loss = GraphedLoss(loss_fn, autocast) if graphs == "forward_backward" else loss_fn
    watch = NonFiniteWatch(device)  # as train.py in one process: the finite test on the device, no sync per step
    stepper = GraphedStep(loss_fn, optimizer, watch, autocast) if graphs == "whole_step" else None
    steps = math.ceil(len(examples) / batch_size)
    model.train()
    seconds = []
    for _ in range(passes):
        synchronize(device)
        start = time.perf_counter()
        for step in range(steps):
            batch = examples[step * batch_size:(step + 1) * batch_size]
            tensors = tokenize_batch(model, [[e.texts[0] for e in batch], [e.texts[1] for e in batch]],
                                     [e.label for e in batch])
            lr = 2e-5 * warmup_then_linear_decay(step, math.ceil(0.1 * steps), steps)
            if stepper is not None:
                stepper.step(tensors, lr)
            else:
                train_step(step_loss, optimizer, tensors, lr, autocast_dtype=autocast, scaler=scaler, watch=watch)
        if host_seconds is not None:
            host_seconds.append(time.perf_counter() - start)
        synchronize(device)
        seconds.append(time.perf_counter() - start)
        if watch.first_failure() is not None:
            raise FloatingPointError(f"minisbert {dtype}: step {watch.first_failure()} was not finite")
    return seconds, len((stepper or step_loss).graphs) if graphs else 0


def train_theirs_plain(folder, examples, batch_size, device, dtype):
    """sentence-transformers' model and SoftmaxLoss in a plain loop (where fit's Trainer is not installed)."""
    from sentence_transformers import SentenceTransformer as Reference
    model = Reference(str(folder), device=device)
    loss = reference_softmax_loss(model)
    optimizer = torch.optim.AdamW(loss.parameters(), lr=2e-5)
    scaler = torch.amp.GradScaler("cuda") if dtype == "fp16" else None
    model.train()
    for step in range(math.ceil(len(examples) / batch_size)):
        batch = examples[step * batch_size:(step + 1) * batch_size]
        features = [{k: v.to(device) if torch.is_tensor(v) else v
                     for k, v in model.preprocess([e.texts[i] for e in batch]).items()} for i in (0, 1)]
        labels = torch.tensor([e.label for e in batch], device=device)
        with torch.autocast(device.split(":")[0], dtype=TORCH_DTYPES[dtype], enabled=dtype != "fp32"):
            value = loss(features, labels)
        (scaler.scale(value) if scaler else value).backward()
        if scaler:
            scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(loss.parameters(), 1.0)
        (scaler.step(optimizer), scaler.update()) if scaler else optimizer.step()
        optimizer.zero_grad()


def training(args, examples, folder: Path, shape: str, record: dict, failures: list) -> None:
    """Pairs per second, batch 16, softmax objective: sentence-transformers' fit (where datasets and accelerate
    are installed: carried to the GPU machine as wheels) and its model and loss in a plain loop, against ours."""
    references = {"sentence-transformers model and loss, plain loop": train_theirs_plain}
    try:
        import accelerate  # noqa: F401
        import datasets  # noqa: F401
        references = {"sentence-transformers fit": train_theirs_fit, **references}
    except Exception as error:  # noqa: BLE001 - any reason fit cannot run here is printed
        print(f"train: no fit() here ({type(error).__name__}: {error}); the plain loop only", flush=True)
    amp = "fp16" if args.device.startswith("cuda") else "fp32"
    warm_up = examples[:160]
    row = record[f"train_{shape}"] = {"reference_dtype": amp}  # filled in place: a failure keeps what was measured
    for name, train_theirs in references.items():
        try:
            row[name] = rate(lambda: train_theirs(folder, examples, 16, args.device, amp), len(examples), args.device,
                             lambda: train_theirs(folder, warm_up, 16, args.device, amp))[0]
        except Exception as error:  # noqa: BLE001 - reported; the other reference still runs
            failures.append(f"train {shape} {name}: {type(error).__name__}: {error}")
    for dtype in (["fp16", "bf16"] if args.device.startswith("cuda") else ["fp32"]):
        mine, _ = rate(lambda: train_ours(folder, examples, 16, args.device, dtype), len(examples), args.device,
                       lambda: train_ours(folder, warm_up, 16, args.device, dtype))
        row[f"minisbert_{dtype}_pairs_per_s"] = mine
        for name in references:
            if name in row:
                row[f"ratio_{dtype}_to_{name}"] = mine / row[name]
                print(f"train {shape:<9} batch 16: {name} ({amp}) {row[name]:.1f} pairs/s, minisbert {dtype} "
                      f"{mine:.1f} pairs/s, {mine / row[name]:.2f}x", flush=True)
        if args.device.startswith("cuda"):
            try:
                graphed_training(args, examples, folder, shape, dtype, references, row)
            except Exception as error:  # noqa: BLE001 - reported; the other dtype still runs
                import traceback
                traceback.print_exc()
                failures.append(f"train {shape} {dtype} with CUDA graphs: {type(error).__name__}: {error}")


def graphed_training(args, examples, folder: Path, shape: str, dtype: str, references: dict, row: dict) -> None:
    """train.py's steps on one GPU (CUDA graphs): the first pass records a graph per batch shape, the second
    replays them. Graphs of forward and backward (train.py's default), and in bf16 also of the whole step
    (--graph-whole-step; tests/test_cuda.py checks its steps against eager ones)."""
    amp = row["reference_dtype"]
    # a figure's name: the graphs recorded
    kinds = {"cuda_graphs": "forward_backward", "whole_step_graphs": "whole_step"}
    for kind in ["cuda_graphs"] + (["whole_step_graphs"] if dtype != "fp16" else []):
        host = []
        seconds, graphs = train_ours(folder, examples, 16, args.device, dtype, kinds[kind], passes=2,
                                     host_seconds=host)
        mine = len(examples) / seconds[1]
        row[f"minisbert_{dtype}_{kind}_host_share"] = host[1] / seconds[1]
        row[f"minisbert_{dtype}_{kind}_pairs_per_s"] = mine
        row[f"minisbert_{dtype}_{kind}_first_pass_s"] = seconds[0]
        row[f"minisbert_{dtype}_{kind}_recorded"] = graphs
        # an AllNLI epoch (batch 16): the steady rate, plus once the first pass's recording time
        row[f"allnli_epoch_minutes_{dtype}_{kind}"] = (ALLNLI_PAIRS / mine + seconds[0]) / 60
        what = "CUDA graphs" if kind == "cuda_graphs" else "whole-step CUDA graphs"
        print(f"train {shape:<9} batch 16: minisbert {dtype} with {what} {mine:.1f} pairs/s ({graphs} graphs, first "
              f"pass {seconds[0]:.1f} s, the host done queuing at {100 * host[1] / seconds[1]:.0f}% of the second); "
              f"an AllNLI epoch {row[f'allnli_epoch_minutes_{dtype}_{kind}']:.1f} min", flush=True)
        for name in references:
            if name in row:
                row[f"ratio_{dtype}_{kind}_to_{name}"] = mine / row[name]
                print(f"train {shape:<9} batch 16: {name} ({amp}) {row[name]:.1f} pairs/s, minisbert {dtype} with "
                      f"{what} {mine / row[name]:.2f}x", flush=True)


# the kernel's settings tried by --tune, in this order: (dtype, what differs from launch_config's); the first of each
# dtype is the reference its results are compared with: launch_config's for fp16, and "ieee" (plain fp32 products) for
# fp32, whose "tf32x3" results (three TF32 products on the tensor cores, launch_config's since 2026-11-27) must be
# within 1e-6 of it. fp16 first, the most promising first: its search goal is the one not met. Never timed yet:
# HOLD_QUERIES (the queries held in shared memory, see topk_kernel.kernel_options: a tile of 128 queries and 64 corpus
# rows reads 48 KB against launch_config's 240 KB for twice the products) and FLATTEN (one loop over tiles and
# dimension slices, so the loads are pipelined across tiles; Triton 3.9 or newer, before which its tiles are timed
# without it). python benchmarks/kernel_registers.py --tiles compiles each for sm_90 (Triton 3.9: every one
# pipelined; spills of 0 to 8 bytes in fp16, 8 to 64 in tf32x3, 580 in "ieee"; shared memory 40 to 194 KB, within an
# H100's 227: held fp32 queries take twice their size as TF32 parts, so fp32 holds 32 of them, not 64, which would
# take 272 KB)
HELD = dict(HOLD_QUERIES=True, num_stages=2)
TILES = [("fp16", {}), ("fp16", dict(HELD, BLOCK_Q=128, BLOCK_C=64, BLOCK_D=128)), ("fp16", dict(FLATTEN=True)),
         ("fp16", dict(HELD, BLOCK_Q=128, BLOCK_C=64, BLOCK_D=64)),
         ("fp16", dict(FLATTEN=True, BLOCK_Q=128, BLOCK_C=128, BLOCK_D=64)),
         ("fp16", dict(HELD, BLOCK_Q=128, BLOCK_C=32, BLOCK_D=128, num_stages=3)),
         ("fp16", dict(FLATTEN=True, BLOCK_Q=128, BLOCK_C=128, BLOCK_D=32, num_stages=4)),
         ("fp32", dict(FP32_PRECISION="ieee", BLOCK_Q=64, BLOCK_C=256, BLOCK_D=32, num_stages=2)), ("fp32", {}),
         ("fp32", dict(FLATTEN=True)), ("fp32", dict(HELD, BLOCK_Q=32, BLOCK_C=64, BLOCK_D=128)),
         ("fp32", dict(FLATTEN=True, num_stages=4))]


def launch_settings(dtype: str, overrides: dict | None = None) -> dict:
    """launch_config's settings for a top-10 search in `dtype` (K_PAD left to the kernel's caller), `overrides` over
    them."""
    from minisbert import topk_kernel

    settings = topk_kernel.launch_config(TORCH_DTYPES[dtype], 10)
    return {key: value for key, value in settings.items() if key != "K_PAD"} | (overrides or {})


def describe(config: dict) -> str:
    """A kernel setting in one short line: tiles, warps, stages and the options that are on."""
    options = [name for name in ("FLATTEN", "HOLD_QUERIES") if config[name]]
    return (f"{config['FP32_PRECISION'] or ''} Q{config['BLOCK_Q']} C{config['BLOCK_C']} D{config['BLOCK_D']} "
            f"w{config['num_warps']} s{config['num_stages']} {' '.join(options)}").strip()


def tune(args, record: dict, failures: list) -> None:
    """The fused kernel's time for 10,000 x 1,000,000 x 384 top-10 under other settings (their results compared with
    launch_config's), to choose launch_config's; stops after --tune-seconds."""
    from minisbert import topk_kernel
    from minisbert.search import _merge_lowest_id_first

    if not args.device.startswith("cuda"):
        print("tune: the kernel runs on CUDA only; skipped", flush=True)
        return
    n_queries, n_corpus = (200, 5_000) if args.quick else (10_000, 1_000_000)
    generator = torch.Generator(device=args.device).manual_seed(0)
    corpus = torch.randn(n_corpus, 384, device=args.device, generator=generator)
    queries = torch.randn(n_queries, 384, device=args.device, generator=generator)
    deadline = time.perf_counter() + args.tune_seconds
    if not topk_kernel.FLATTEN_COMPILES:  # most likely on the GPU machine: its PyTorch 2.11 brings Triton 3.7
        print(f"tune: Triton {topk_kernel.triton.__version__} cannot compile FLATTEN (3.9 can): its settings are timed "
              "without it", flush=True)
    rows, expected, tried = [], {}, []
    for dtype, overrides in TILES:
        if time.perf_counter() > deadline:
            break
        if not topk_kernel.FLATTEN_COMPILES:
            overrides = {**overrides, "FLATTEN": False}
        config = launch_settings(dtype, overrides)
        if (dtype, config) in tried:  # a FLATTEN setting without FLATTEN can be one already timed
            continue
        tried.append((dtype, config))
        q, c = queries.to(TORCH_DTYPES[dtype]), corpus.to(TORCH_DTYPES[dtype])
        try:
            with warnings.catch_warnings():  # a setting too large for this GPU is refused, not timed as a smaller one
                warnings.simplefilter("error", topk_kernel.SteppedDown)
                seconds, found = timed(lambda: _merge_lowest_id_first(
                    *topk_kernel.cosine_top_k(q, c, 10, config=config), 10), args.repeats, args.device)
        except Exception as error:  # noqa: BLE001 - another setting the compiler refuses: reported, not fatal
            message = f"tune {dtype} {describe(config)}: {type(error).__name__}: {str(error)[:200]}"
            print(message, flush=True)
            if dtype not in expected:  # the reference setting of its dtype
                failures.append(message)
            continue
        reference = expected.setdefault(dtype, found)
        # another BLOCK_D sums in another order: the same hits, scores equal to fp32 rounding
        gaps = (found[0] - reference[0]).abs()
        tolerance = 1e-6 if config["FP32_PRECISION"] == "tf32x3" else 1e-5
        same = gaps.max().item() < tolerance and not ((found[1] != reference[1]) & (gaps > tolerance)).any().item()
        rows.append({"dtype": dtype, **config, "seconds": seconds, "largest_score_gap": gaps.max().item(),
                     "same_as_default": same})
        print(f"tune {dtype} {describe(config)}: {seconds * 1000:.1f} ms, largest score gap {gaps.max().item():.1e}"
              + ("" if same else "  DIFFERENT RESULTS"), flush=True)
        if not same:
            failures.append(f"tune {dtype} {describe(config)}: results differ from the reference setting's")
    record["kernel_tiles"] = rows
    search_with_fastest_tiles(args, record, failures, rows, queries, corpus)


def search_with_fastest_tiles(args, record: dict, failures: list, rows: list, queries, corpus) -> None:
    """semantic_search timed again with the fastest setting of each dtype that is not launch_config's (its results
    the reference's): the figure a change of launch_config would give, against the sentence-transformers time of
    this run's search part (the same vectors), without another run on a GPU."""
    from minisbert import topk_kernel

    chosen = topk_kernel.launch_config
    for dtype in dict.fromkeys(row["dtype"] for row in rows):
        default = launch_settings(dtype)
        fastest = min((row for row in rows if row["dtype"] == dtype and row["same_as_default"]),
                      key=lambda row: row["seconds"])
        setting = {key: fastest[key] for key in default}
        theirs = record.get(f"search_{dtype}", {})
        if setting == default or "minisbert_s" not in theirs:
            continue
        q, c = queries.to(TORCH_DTYPES[dtype]), corpus.to(TORCH_DTYPES[dtype])
        before = semantic_search(q, c, top_k=10)
        topk_kernel.launch_config = lambda dtype, k: {**chosen(dtype, k), **setting}
        try:
            ours_s, ours = timed(lambda: semantic_search(q, c, top_k=10), args.repeats, args.device)
        finally:
            topk_kernel.launch_config = chosen
        tolerance = 1e-6 if setting["FP32_PRECISION"] == "tf32x3" else 1e-5
        wrong = differing(hits(ours), hits(before), tolerance)
        ratio = theirs["sentence_transformers_s"] / ours_s
        record[f"search_{dtype}_fastest_tiles"] = {**setting, "minisbert_s": ours_s, "ratio": ratio,
                                                   "differing_hits_from_launch_config": wrong}
        print(f"search {dtype} with the fastest setting ({describe(setting)}): {ours_s:.3f} s (launch_config's "
              f"{theirs['minisbert_s']:.3f} s), {ratio:.1f}x sentence-transformers, differing hits {wrong}", flush=True)
        if wrong:
            failures.append(f"search {dtype} with {describe(setting)}: {wrong} hits differ from launch_config's")


def profile(args, sentences, examples, folder: Path, shape: str) -> None:
    """Where the time goes: PyTorch profiler tables (by CPU and by device time) of one encoding run in bf16 and of
    20 training steps in bf16, written to --profile."""
    from torch.profiler import ProfilerActivity, profile as profiler

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device.startswith("cuda") else [])
    model = SentenceTransformer(folder, device=args.device)
    model.encode(sentences[:512], batch_size=256, dtype="bf16")
    runs = {"encode": lambda: model.encode(sentences[:4096], batch_size=256, dtype="bf16"),
            "train": lambda: train_ours(folder, examples[:320], 16, args.device, "bf16")}
    args.profile.mkdir(parents=True, exist_ok=True)
    for name, run in runs.items():
        with profiler(activities=activities) as trace:
            run()
            synchronize(args.device)
        sort = "self_cuda_time_total" if args.device.startswith("cuda") else "self_cpu_time_total"
        table = (trace.key_averages().table(sort_by=sort, row_limit=25) + "\n"
                 + trace.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
        (args.profile / f"profile_{shape}_{name}.txt").write_text(table)
        print(f"profile {shape} {name}:\n" + table[:3000], flush=True)


PARTS = ["encode", "train", "search"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--assets", type=Path, default=Path(".gpu"), help="sentences.txt, pairs.jsonl, tokenizer.json")
    parser.add_argument("--json", type=Path, default=Path("gpu_check.json"), help="where the figures go")
    parser.add_argument("--sentences", type=int, default=10_000, help="sentences to encode")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--train-pairs", type=int, default=1600, help="pairs per training run (100 steps of 16)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, to try the script out")
    parser.add_argument("--tune-seconds", type=float, default=0, help="try other kernel tiles for this long")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=PARTS, help="what to measure (default: all)")
    parser.add_argument("--profile", type=Path, help="a folder for PyTorch profiler tables of encoding and training")
    parser.add_argument("--seconds", type=float, default=0,
                        help="start no part after this many seconds (0: no limit); the parts run in priority order")
    args = parser.parse_args()
    if args.quick:
        args.sentences, args.batch_sizes, args.train_pairs, args.repeats = 200, [64], 64, 1
    sentences = (args.assets / "sentences.txt").read_text(encoding="utf-8").split("\n")[:args.sentences]
    rows = [json.loads(line) for line in (args.assets / "pairs.jsonl").read_text().splitlines()[:args.train_pairs]]
    examples = [Example((row["sentence1"], row["sentence2"]), row["label"]) for row in rows]
    import sentence_transformers

    from minisbert import topk_kernel
    record = {"date": time.strftime("%Y-%m-%d"), "device": torch.cuda.get_device_name(args.device)
              if args.device.startswith("cuda") else "cpu", "torch": torch.__version__,
              # what the kernel's settings can be depends on it (topk_kernel.TRITON_TOO_OLD, FLATTEN_COMPILES)
              "triton": topk_kernel.triton.__version__ if topk_kernel.triton else None,
              "sentence_transformers": sentence_transformers.__version__, "sentences": len(sentences)}
    print(json.dumps({k: record[k] for k in ("date", "device", "torch", "triton", "sentence_transformers")}),
          flush=True)
    failures = []

    stop_starting = time.perf_counter() + args.seconds if args.seconds else math.inf

    def section(name, function, *arguments):
        """Run one part; an exception is a failure, and the others still run. The figures are written after each.
        A part not started by --seconds is listed under "not_started" (not a failure: nothing disagreed)."""
        start = time.perf_counter()
        if start > stop_starting:
            record.setdefault("not_started", []).append(name)
            print(f"[{name}: NOT STARTED, the {args.seconds:g} s of --seconds are spent]", flush=True)
        else:
            try:
                function(*arguments)
            except Exception as error:  # noqa: BLE001 - reported, and the exit status says so
                import traceback
                traceback.print_exc()
                failures.append(f"{name}: {type(error).__name__}: {error}")
            print(f"[{name}: {time.perf_counter() - start:.1f} s]", flush=True)
        record["failures"] = failures
        args.json.write_text(json.dumps(record, indent=2) + "\n")

    # the goals not yet met first (fp16 search, the kernel's settings, an AllNLI epoch of bert-base), so that a run
    # cut short by its time limit loses the parts already measured, not the ones that decide what to change
    if "search" in args.parts:
        section("search and mining", search_and_mining, args, record, failures)
    if args.tune_seconds:
        section("kernel tiles", tune, args, record, failures)
    with tempfile.TemporaryDirectory() as scratch:
        folders = {}

        def model(shape: str) -> Path:
            if shape not in folders:
                folders[shape] = random_model(shape, args.assets, Path(scratch) / shape)
            return folders[shape]

        if "train" in args.parts:
            for shape in ("bert-base", "minilm"):
                section(f"train {shape}", lambda shape=shape: training(args, examples, model(shape), shape, record,
                                                                        failures))
        for shape in ("minilm", "bert-base"):
            if "encode" in args.parts:
                section(f"encode {shape}", lambda shape=shape: encoding(args, sentences, model(shape), shape, record,
                                                                         failures))
            if args.profile:
                section(f"profile {shape}", lambda shape=shape: profile(args, sentences, examples, model(shape), shape))
    skipped = record.get("not_started")
    print(f"figures in {args.json}; " + (f"FAILURES: {failures}" if failures else "no failures")
          + (f"; NOT STARTED for lack of time: {skipped}" if skipped else ""), flush=True)
    sys.exit(1 if failures else 0)

if __name__ == "__main__":
    main()
