"""Fine-tune a sentence model as the SBERT paper does.

    python train.py --data snli                       # softmax over (u, v, |u-v|) on SNLI, batch 16, lr 2e-5
    python train.py --data stsb                       # cosine similarity regression (MSE) on the STS benchmark
    python train.py --data allnli --model bert-base-uncased --output sbert-nli   # the paper's setup
    torchrun --nproc_per_node 2 train.py --data snli  # data-parallel, --batch-size per process
    python train.py --data allnli --precision bf16   # one GPU: steps replayed as CUDA graphs (--no-cuda-graphs: eager)
    python train.py --data pairs.jsonl                # {"anchor": ..., "positive": ...} lines: in-batch negatives

Warmup over the first 10% of the steps, then linear decay; AdamW, weight decay 0.01, gradients clipped at 1.
Evaluates on the STS benchmark dev set every --eval-steps and at the end of each epoch (and the test set before
and after), writes checkpoints to <output>/checkpoints (--resume continues from the newest), a metrics log to
<output>/metrics.jsonl, and the final model to <output> in the sentence-transformers format.
"""

import argparse
import fcntl
import math
import os
import shlex
import shutil
import signal
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from minisbert import SentenceTransformer
from minisbert.checkpoint import DEFAULT_MODEL, output_folder
from minisbert.cli import HelpFormatter, run
from minisbert.cuda_graphs import GraphedLoss, GraphedStep
from minisbert.data import (OFFICIAL_ARCHIVES, DataError, batch_order, default_data_dir, ensure_downloaded,
                            find_sts_benchmark, nli_triplets, read_sts_benchmark, read_training_data, shard)
from minisbert.evaluate import sts_correlations
from minisbert.losses import CONCATENATIONS, LOSSES, tokenize_batch
from minisbert.optim import AdamW, parameter_groups, warmup_then_linear_decay
from minisbert.pooling import POOLING_MODES, Pooling
from minisbert.training import (LossWindow, MetricsLog, NonFiniteWatch, list_checkpoints, load_training_state,
                                read_run_arguments, save_checkpoint, train_step)

AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# the losses each kind of training data (read_training_data) trains with, the first by default, and its name in errors
KIND_LOSSES = {"nli": ("softmax", "triplet", "mnrl"), "sts": ("cosine",), "classes": ("softmax",),
               "pairs": ("mnrl", "triplet")}
KIND_NAMES = {"nli": "NLI pairs", "sts": "pairs with gold similarity scores", "classes": "pairs with class labels",
              "pairs": "anchors with positives and no labels"}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--data", required=True, help="snli, mnli, allnli (both), stsb, a file of one of their formats, "
                        "or JSON lines of sentence-transformers dataset columns")
    parser.add_argument("--data-dir", type=Path, default=default_data_dir(),
                        help="where the data files are ($MINISBERT_DATA, else ./data)")
    parser.add_argument("--download", action="store_true",
                        help="fetch a missing data set into --data-dir (without it: into the download cache, "
                             "unless HF_HUB_OFFLINE is set)")
    parser.add_argument("--loss", choices=list(LOSSES), help="if not given: softmax for NLI data and pairs with class "
                        "labels, cosine for STS data and pairs with scores, mnrl for anchors with positives")
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help="a base encoder or a sentence model: folder or hub id (the default runs offline)")
    parser.add_argument("--pooling", choices=POOLING_MODES,
                        help="replace the model's pooling (the paper compares mean, cls and max)")
    parser.add_argument("--concat", default="u,v,|u-v|", help=f"softmax features, from {', '.join(CONCATENATIONS)}")
    parser.add_argument("--epochs", type=int, default=1, help="passes over the training data")
    parser.add_argument("--batch-size", type=int, default=16, help="pairs per step and process")
    parser.add_argument("--lr", type=float, default=2e-5, help="the peak learning rate of AdamW")
    parser.add_argument("--warmup", type=float, default=0.1, help="fraction of the steps with a rising learning rate")
    parser.add_argument("--max-steps", type=int, help="stop after this many steps (the schedule spans them)")
    parser.add_argument("--eval-steps", type=int, default=1000, help="evaluate every N steps; 0: at epoch ends only")
    parser.add_argument("--checkpoint-steps", type=int, default=1000, help="checkpoint every N steps")
    parser.add_argument("--checkpoint-minutes", type=float, default=5.0,
                        help="also checkpoint when this much time has passed since the last checkpoint")
    parser.add_argument("--log-steps", type=int, default=10, help="a metrics record every N steps")
    parser.add_argument("--seed", type=int, default=42, help="seeds the data order, dropout and the loss head")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cpu, cuda or cuda:N")
    parser.add_argument("--precision", choices=list(AUTOCAST), default="fp32",
                        help="mixed precision: bf16 (CPU or GPU) or fp16 (GPU); the weights stay fp32")
    parser.add_argument("--cuda-graphs", action=argparse.BooleanOptionalAction,
                        help="replay each step's forward and backward as a CUDA graph, one per batch shape (lengths "
                             "padded to multiples of 16): far fewer kernel launches (minisbert/cuda_graphs.py). The "
                             "default on one GPU in one process; --no-cuda-graphs runs every step eagerly")
    parser.add_argument("--graph-whole-step", action="store_true",
                        help="with CUDA graphs, record the whole step: also clipping, the finite test and AdamW, one "
                             "replay a step (bf16 or fp32; not yet timed on a GPU, so not the default)")
    parser.add_argument("--output", type=Path, default=Path("output/minisbert-model"),
                        help="the folder of this run: the final model, checkpoints/ and metrics.jsonl")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --output")
    parser.add_argument("--overwrite", action="store_true",
                        help="start afresh in an --output that holds another run (its checkpoints and metrics go)")
    args = parser.parse_args(argv)
    concat = tuple(part.strip() for part in args.concat.split(","))
    if not set(concat) <= set(CONCATENATIONS) or len(set(concat)) != len(concat):
        parser.error(f"--concat {args.concat!r}: use distinct parts from {', '.join(CONCATENATIONS)}")
    args.concat = concat
    for name in ("epochs", "batch_size", "log_steps", "checkpoint_steps", "max_steps"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, not {getattr(args, name)}")
    if args.eval_steps < 0:
        parser.error(f"--eval-steps must be 0 (epoch ends only) or more, not {args.eval_steps}")
    if not args.lr > 0 or not math.isfinite(args.lr):
        parser.error(f"--lr must be above 0, not {args.lr}")
    if not args.checkpoint_minutes > 0:
        parser.error(f"--checkpoint-minutes must be above 0, not {args.checkpoint_minutes}")
    if not 0 <= args.warmup < 1:
        parser.error("--warmup is a fraction of the steps, in [0, 1)")
    if args.resume and args.overwrite:
        parser.error("--resume and --overwrite exclude each other")
    return args


# What defines a run: a checkpoint records these, and --resume refuses to continue with others.
RUN_ARGUMENTS = ("model", "pooling", "loss", "concat", "data", "epochs", "batch_size", "lr", "warmup", "max_steps",
                 "seed", "precision")


def run_arguments(args, loss_name: str, world_size: int) -> dict:
    values = {name: getattr(args, name) for name in RUN_ARGUMENTS}
    values.update(model=str(args.model), loss=loss_name, concat=list(args.concat), world_size=world_size)
    return values


def check_same_run(stored: dict, current: dict, checkpoint: Path) -> None:
    differences = [f"--{name.replace('_', '-')} {stored[name]!r} there, {current.get(name)!r} now"
                   for name in stored if stored[name] != current.get(name)]
    if differences:
        raise ValueError(f"--resume: {checkpoint} belongs to a run with other arguments: {'; '.join(differences)}. "
                         "Resume with the same arguments, or start a new run with another --output")


def claim_output(output: Path, resume: bool, overwrite: bool):
    """Lock `output` for this run (released when the process ends, however it ends) and check it holds no other run."""
    output = output_folder(output, "--output")
    lock = open(output / ".train.lock", "a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        raise ValueError(f"another train.py (pid {lock.read().strip() or '?'}) is writing to {output}; "
                         "wait for it, or choose another --output") from None
    lock.seek(0)
    lock.truncate()
    lock.write(str(os.getpid()))
    lock.flush()
    previous = [name for name in ("checkpoints", "metrics.jsonl") if (output / name).exists()]
    if previous and not resume:
        if not overwrite:
            raise ValueError(f"--output {output} already holds a training run ({' and '.join(previous)}): pass "
                             "--resume to continue it, another --output, or --overwrite to replace it")
        shutil.rmtree(output / "checkpoints", ignore_errors=True)
        (output / "metrics.jsonl").unlink(missing_ok=True)
    return lock


class StopRequest:
    """Ctrl-C (SIGINT) or SIGTERM asks the run to checkpoint at the next step boundary and stop."""

    def __init__(self):
        self.signal = None
        for number in (signal.SIGINT, signal.SIGTERM):
            signal.signal(number, self.handle)

    def handle(self, number, frame):
        if self.signal is not None:  # a second Ctrl-C: stop at once
            raise KeyboardInterrupt
        self.signal = number
        tqdm.write("stopping after this step; Ctrl-C again to stop at once, without a checkpoint")


def setup_distributed(args):
    """(rank, world size, device): torchrun sets WORLD_SIZE; NCCL between GPUs, gloo between CPU processes."""
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    if world_size == 1:
        return 0, 1, torch.device(args.device)
    on_gpu = args.device.startswith("cuda")
    dist.init_process_group("nccl" if on_gpu else "gloo")
    device = torch.device(f"cuda:{int(os.environ['LOCAL_RANK'])}") if on_gpu else torch.device("cpu")
    return dist.get_rank(), world_size, device


def load_data(args, rank):
    """The training examples, the loss (--loss, or the data's default) and the softmax objective's number of classes:
    NLI's three, or as many as a file's class labels number."""
    if args.data in (*OFFICIAL_ARCHIVES, "allnli"):  # a named data set: downloaded if it is nowhere here
        if rank == 0:
            for name in ["snli", "mnli"] if args.data == "allnli" else [args.data]:
                ensure_downloaded(name, args.data_dir, into_data_dir=args.download)
        if dist.is_initialized():
            dist.barrier()
    examples, kind = read_training_data(args.data, args.data_dir)
    loss = args.loss or KIND_LOSSES[kind][0]
    if loss not in KIND_LOSSES[kind]:
        raise DataError(f"--loss {loss} does not fit --data {args.data} ({KIND_NAMES[kind]}): it trains with "
                        f"--loss {' or '.join(KIND_LOSSES[kind])}")
    if kind == "pairs" and loss == "triplet" and len(examples[0].texts) != 3:
        raise DataError(f"--loss triplet needs three text columns (anchor, positive, negative); --data {args.data} "
                        f"has {len(examples[0].texts)}")
    if kind == "nli" and loss in ("triplet", "mnrl"):
        examples = nli_triplets(examples)  # (premise, entailed, contradicted)
    if not examples:
        raise DataError(f"--data {args.data}: no training examples")
    classes = 1 + max(example.label for example in examples) if kind == "classes" else 3  # the softmax's
    if classes < 2:
        raise DataError(f"--data {args.data}: every label is 0; the softmax objective needs two classes or more")
    return examples, loss, classes


def evaluate(model, path: Path, split: str, log: MetricsLog, step: int, epoch: int) -> None:
    scores = sts_correlations(model, read_sts_benchmark(path), batch_size=32, show_progress_bar=sys.stderr.isatty())
    log.write({"step": step, "epoch": epoch, f"stsb_{split}_spearman": scores["spearman"],
               f"stsb_{split}_pearson": scores["pearson"]})
    tqdm.write(f"step {step}: STS benchmark {split} Spearman {100 * scores['spearman']:.2f}")


def agree(flags: list[bool], world_size: int, device) -> list[bool]:
    """Each flag set if any process set it: every process must checkpoint and stop together."""
    if world_size == 1:
        return flags
    values = torch.tensor(flags, dtype=torch.float32, device=device)
    dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return [bool(v) for v in values.tolist()]


def build_training(args, loss_name: str, resume_from: Path | None, device, classes: int = 3):
    """The model (from --model, or the checkpoint resumed), its loss (softmax: over `classes`), AdamW, and fp16's
    gradient scaler."""
    if args.precision == "fp16" and device.type != "cuda":
        raise ValueError("--precision fp16 needs a GPU; on the CPU use bf16")
    model = SentenceTransformer(resume_from or args.model, device=device)
    if args.pooling and not resume_from:
        model.pooling = Pooling(model.encoder.config.hidden_size, args.pooling)
    loss_options = {"softmax": {"concatenation": args.concat, "num_labels": classes},
                    "triplet": {"triplet_margin": 1.0},  # the paper's margin
                    "mnrl": {"gather_across_devices": True},  # processes train as one, on the global batch
                    }.get(loss_name, {})
    loss_fn = LOSSES[loss_name](model, **loss_options).to(device)
    optimizer = AdamW(parameter_groups(loss_fn, weight_decay=0.01), lr=args.lr)
    scaler = torch.amp.GradScaler("cuda") if args.precision == "fp16" else None
    return model, loss_fn, optimizer, scaler


class Checkpointing:
    """When to write a checkpoint: every --checkpoint-steps steps or --checkpoint-minutes, whichever comes first."""

    def __init__(self, steps: int, minutes: float, step: int):
        self.steps, self.seconds = steps, 60 * minutes
        self.written(step)

    def due(self, step: int) -> bool:
        return step % self.steps == 0 or time.monotonic() - self.written_at > self.seconds

    def written(self, step: int) -> None:
        self.step, self.written_at = step, time.monotonic()


def local_batch(model, examples, indices: list[int], rank: int, world_size: int) -> tuple[dict, float]:
    """This process's share of a global batch as tensors, and the weight of its mean loss: its share of the
    global batch times the number of processes (DDP averages their gradients), so an uneven last batch trains
    as it would in one process."""
    local = [examples[i] for i in shard(indices, rank, world_size)]
    columns = [list(texts) for texts in zip(*(e.texts for e in local))]
    return tokenize_batch(model, columns, [e.label for e in local]), len(local) * world_size / len(indices)


def mean_over_processes(loss: torch.Tensor, world_size: int) -> float:
    """The loss of the global batch, as one process would see it."""
    if world_size > 1:
        dist.all_reduce(loss)  # a sum (gloo has no average)
        loss = loss / world_size
    return loss.item()


def resume_command(world_size: int) -> str:
    arguments = [a for a in sys.argv[1:] if a not in ("--resume", "--overwrite")] + ["--resume"]
    launcher = ["torchrun", "--nproc_per_node", str(world_size)] if world_size > 1 else ["python"]
    return shlex.join(launcher + [sys.argv[0]] + arguments)


def main():
    args = parse_args()
    rank, world_size, device = setup_distributed(args)
    if args.cuda_graphs and (device.type != "cuda" or world_size > 1):
        raise ValueError(f"--cuda-graphs needs one GPU and one process; this run has {world_size} "
                         f"process{'es' if world_size > 1 else ''} on {device}")
    cuda_graphs = args.cuda_graphs if args.cuda_graphs is not None else device.type == "cuda" and world_size == 1
    if args.graph_whole_step and (not cuda_graphs or args.precision == "fp16"):
        has = "--precision fp16" if cuda_graphs else f"no CUDA graphs ({device}, {world_size} process(es))"
        raise ValueError(f"--graph-whole-step needs CUDA graphs (one GPU, one process) and bf16 or fp32; this run has "
                         f"{has}")
    main_process = rank == 0
    # the lock lasts while its file is open, so it is held in a variable until the process ends, however it ends
    output_lock = claim_output(args.output, args.resume, args.overwrite) if main_process else None  # noqa: F841
    torch.manual_seed(args.seed)
    examples, loss_name, classes = load_data(args, rank)
    sts_dirs = [args.data_dir, args.data_dir.parent, default_data_dir()]
    sts_dev, sts_test = (find_sts_benchmark(split, *sts_dirs) for split in ("dev", "test"))
    arguments = run_arguments(args, loss_name, world_size)

    resume_from = None
    if args.resume:
        if not list_checkpoints(args.output):
            raise ValueError(f"--resume: no checkpoint under {args.output / 'checkpoints'}")
        resume_from = list_checkpoints(args.output)[-1]
        check_same_run(read_run_arguments(resume_from), arguments, resume_from)
    model, loss_fn, optimizer, scaler = build_training(args, loss_name, resume_from, device, classes)
    autocast = AUTOCAST[args.precision]

    global_batch = args.batch_size * world_size
    # a last batch too small to give every process a pair is skipped, so it is no step of the schedule
    steps_per_epoch = len(examples) // global_batch + (len(examples) % global_batch >= world_size)
    total_steps = min(args.max_steps or math.inf, args.epochs * steps_per_epoch)
    warmup_steps = math.ceil(total_steps * args.warmup)
    progress = {"step": 0, "epoch": 0, "batch": 0}  # steps done; the epoch and batch to run next
    if resume_from:
        progress = load_training_state(resume_from, loss_fn, optimizer, scaler)
        if main_process:
            print(f"resuming from {resume_from} (step {progress['step']})", file=sys.stderr)
    log = MetricsLog(args.output / "metrics.jsonl", progress["step"] if resume_from else None) if main_process else None
    # one process: each step's finite test runs on the device, read below only before the weights are kept or shown
    # (and at log records), so that a GPU step does not wait for the host; several processes agree on it at once
    watch = NonFiniteWatch(device, progress["step"]) if world_size == 1 else None
    trained = torch.nn.parallel.DistributedDataParallel(loss_fn) if world_size > 1 else loss_fn
    whole_step = GraphedStep(loss_fn, optimizer, watch, autocast) if args.graph_whole_step else None
    if cuda_graphs and whole_step is None:
        trained = GraphedLoss(loss_fn, autocast)

    def stop_if_not_finite(step: int | None = None, where: str = "") -> None:
        """Raise if a step was not finite: `step` from train_step's own test, else the watch's (waits for the GPU)."""
        step = step or (watch.first_failure() if watch else None)
        if step is not None:
            kept = list_checkpoints(args.output)
            raise FloatingPointError(
                f"the loss or its gradient is not finite at step {step}{where}; no weight was updated from then on. "
                f"The last good checkpoint is {kept[-1] if kept else 'none (none written yet)'}. "
                "Try a lower --lr or --precision fp32.")

    def checkpoint() -> Path:
        stop_if_not_finite()
        return save_checkpoint(args.output, model, loss_fn, optimizer, scaler, dict(progress), arguments)

    if main_process:
        print(f"{len(examples):,} training examples, loss {loss_name}, {total_steps:,} steps of {global_batch} "
              f"({world_size} process{'es' if world_size > 1 else ''}), warmup {warmup_steps}", file=sys.stderr)
        if sts_test is None:
            print(f"note: no STS benchmark under {', '.join(map(str, sts_dirs))}: no evaluation", file=sys.stderr)
        elif not resume_from:
            evaluate(model, sts_test, "test", log, 0, 0)

    stop = StopRequest()
    bar = tqdm(total=total_steps, initial=progress["step"], disable=not main_process, desc="Training")
    window = LossWindow()
    checkpoints = Checkpointing(args.checkpoint_steps, args.checkpoint_minutes, progress["step"])
    model.train()
    for epoch in range(progress["epoch"], args.epochs):
        batches = batch_order(len(examples), global_batch, args.seed, epoch)
        for b in range(progress["batch"], len(batches)):
            if progress["step"] >= total_steps:
                break
            progress.update(epoch=epoch, batch=b + 1)
            if len(batches[b]) < world_size:  # too few for every process to get one: skipped everywhere alike
                continue
            started = time.perf_counter()
            batch, weight = local_batch(model, examples, batches[b], rank, world_size)
            lr = args.lr * warmup_then_linear_decay(progress["step"], warmup_steps, total_steps)
            if whole_step is not None:
                loss = whole_step.step(batch, lr)
            else:
                loss = train_step(trained, optimizer, batch, lr, autocast_dtype=autocast, scaler=scaler, weight=weight,
                                  is_finite=lambda finite: not agree([not finite], world_size, device)[0], watch=watch)
            if loss is None:
                stop_if_not_finite(progress["step"] + 1, f" (epoch {epoch}, batch {b})")
            progress["step"] += 1
            logging = main_process and progress["step"] % args.log_steps == 0
            if logging:  # waits for the GPU, so that the window's seconds hold its work
                stop_if_not_finite()
            loss = loss if world_size == 1 else mean_over_processes(loss, world_size)  # one process: stays on the GPU
            window.add(loss, time.perf_counter() - started)
            bar.update()
            if logging:
                record = window.record(progress["step"], epoch, lr, global_batch)
                log.write(record)
                bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{lr:.2e}", pairs_s=f"{record['pairs_per_s']:.0f}")
            if main_process and sts_dev and args.eval_steps and progress["step"] % args.eval_steps == 0:
                stop_if_not_finite()
                evaluate(model, sts_dev, "dev", log, progress["step"], epoch)
            due, stopping = agree([checkpoints.due(progress["step"]), stop.signal is not None], world_size, device)
            if due or stopping:
                folder = checkpoint()
                checkpoints.written(progress["step"])
            if stopping:
                bar.close()
                if main_process:
                    print(f"stopped at step {progress['step']}; the checkpoint is {folder}. To continue:\n"
                          f"  {resume_command(world_size)}", file=sys.stderr)
                sys.exit(128 + (stop.signal or signal.SIGINT))
        if progress["batch"] == len(batches):  # the epoch is complete
            progress.update(epoch=epoch + 1, batch=0)
            if main_process and sts_dev:
                stop_if_not_finite()
                evaluate(model, sts_dev, "dev", log, progress["step"], epoch)
            checkpoint()
            checkpoints.written(progress["step"])
        if progress["step"] >= total_steps:
            break
    bar.close()
    if checkpoints.step != progress["step"]:  # a run that ends mid-epoch can still be resumed or extended
        checkpoint()

    stop_if_not_finite()
    if main_process:
        model.eval()
        model.save(args.output)
        if sts_test is not None:
            evaluate(model, sts_test, "test", log, progress["step"], progress["epoch"])
        print(f"saved {args.output}", file=sys.stderr)
    if world_size > 1:
        dist.barrier()  # the others wait for the saved model
        # DDP's reducer holds the process group; freed after the group is destroyed, its teardown can wait forever
        # on a peer that has already exited, so it goes first
        del trained
        dist.destroy_process_group()


if __name__ == "__main__":
    run(main, "train.py", errors=(FileNotFoundError, ValueError, FloatingPointError))
