"""Training speed: minisbert's training loop against sentence-transformers' fit, same data, model and batch size.

    python benchmarks/train_speed.py                       # CPU, all-MiniLM-L6-v2, softmax objective, batch 16
    python benchmarks/train_speed.py --device cuda --shape bert-base --precision fp16   # GPU, random weights

Both train the softmax objective over (u, v, |u-v|) on the same SNLI pairs in the same order (the first
--steps x --batch-size of the training sample), one epoch, with AdamW at 2e-5 and 10% warmup, after a short
warm-up run of each. minisbert runs three times: as it is, on the padded batch instead of on the real tokens only
(which measures what packing gains), and with AdamW written out in foreach ops instead of PyTorch's fused kernel
(which measures what the fused kernel gains). Prints pairs per second and the ratios. With --shape,
all start from one random-weight model of that shape (tokenizer from --tokenizer-from), which is fine for timing.
sentence-transformers' fit needs the `datasets` and `accelerate` packages.
"""

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from minisbert import SentenceTransformer  # noqa: E402
from minisbert.checkpoint import default_model_folder  # noqa: E402
from minisbert.data import read_nli  # noqa: E402
from minisbert.encoder import Encoder, EncoderConfig  # noqa: E402
from minisbert.losses import SoftmaxLoss, tokenize_batch  # noqa: E402
from minisbert.optim import AdamW, parameter_groups, warmup_then_linear_decay  # noqa: E402
from minisbert.tokenize import Tokenizer  # noqa: E402
from minisbert.training import train_step  # noqa: E402

SHAPES = {"minilm": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536),
          "bert-base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)}


def random_model(shape: str, tokenizer_from: Path, folder: Path) -> Path:
    torch.manual_seed(0)
    encoder = Encoder(EncoderConfig(model_type="bert", vocab_size=30522, **SHAPES[shape]))
    SentenceTransformer(encoder=encoder, tokenizer=Tokenizer.from_folder(tokenizer_from, 128, 512)).save(folder)
    return folder


def ours(folder, examples, batch_size, device, precision, packing=True, fused=None):
    model = SentenceTransformer(folder, device=device)
    model.encoder.packing = packing
    loss_fn = SoftmaxLoss(model, num_labels=3)
    optimizer = AdamW(parameter_groups(loss_fn), lr=2e-5, fused=fused)
    autocast = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
    steps = math.ceil(len(examples) / batch_size)
    model.train()
    for step in range(steps):
        batch = examples[step * batch_size:(step + 1) * batch_size]
        columns = [[e.texts[0] for e in batch], [e.texts[1] for e in batch]]
        tensors = tokenize_batch(model, columns, [e.label for e in batch])
        lr = 2e-5 * warmup_then_linear_decay(step, math.ceil(0.1 * steps), steps)
        train_step(loss_fn, optimizer, tensors, lr, autocast_dtype=autocast, scaler=scaler).item()


def reference_softmax_loss(model):
    """sentence-transformers' SoftmaxLoss for `model`, under the names of 6.1 and later or of earlier versions."""
    try:
        from sentence_transformers.sentence_transformer.losses import SoftmaxLoss
    except ImportError:
        from sentence_transformers.losses import SoftmaxLoss
    dimension = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    return SoftmaxLoss(model, dimension(), num_labels=3).to(model.device)


def theirs(folder, examples, batch_size, device, precision):
    from sentence_transformers import InputExample
    from sentence_transformers import SentenceTransformer as Reference
    from torch.utils.data import DataLoader

    model = Reference(str(folder), device=device)
    loss = reference_softmax_loss(model)
    loader = DataLoader([InputExample(texts=list(e.texts), label=e.label) for e in examples], shuffle=False,
                        batch_size=batch_size)
    with tempfile.TemporaryDirectory() as scratch:
        # fit() writes its Trainer's files under the working directory
        cwd = os.getcwd()
        os.chdir(scratch)
        try:
            model.fit(train_objectives=[(loader, loss)], epochs=1, warmup_steps=math.ceil(0.1 * len(loader)),
                      show_progress_bar=False, use_amp=precision != "fp32")
        finally:
            os.chdir(cwd)


def timed(function, folder, examples, batch_size, device, precision) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    function(folder, examples, batch_size, device, precision)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("MINISBERT_DATA", "../shared/data")))
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default: %(default)s)")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                        help="ours: autocast dtype; sentence-transformers: use_amp (its fp16) unless fp32")
    parser.add_argument("--shape", choices=list(SHAPES), help="random weights of this shape instead of the default model")
    parser.add_argument("--tokenizer-from", type=Path, help="a folder with vocab.txt / tokenizer.json (for --shape)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    examples = read_nli(args.data / "nli" / "snli_1.0_train.sample20k.jsonl")[:args.steps * args.batch_size]
    warm_up = examples[:5 * args.batch_size]
    with tempfile.TemporaryDirectory() as scratch:
        if args.shape:
            folder = random_model(args.shape, args.tokenizer_from or default_model_folder(), Path(scratch) / "model")
        else:
            folder = default_model_folder()
        name = args.shape or "all-MiniLM-L6-v2"
        print(f"{name}, softmax objective, batch {args.batch_size}, {len(examples)} pairs, {args.device}, "
              f"{args.precision}, torch {torch.__version__}")
        results = {}
        runs = (("sentence-transformers fit", theirs), ("minisbert", ours),
                ("minisbert, padded batch", lambda *a: ours(*a, packing=False)),
                ("minisbert, written-out AdamW", lambda *a: ours(*a, fused=False)))
        for label, function in runs:
            timed(function, folder, warm_up, args.batch_size, args.device, args.precision)
            seconds = timed(function, folder, examples, args.batch_size, args.device, args.precision)
            results[label] = len(examples) / seconds
            print(f"{label:<28} {results[label]:8.1f} pairs/s   ({seconds:.1f} s)", flush=True)
        fit = results["sentence-transformers fit"]
        print(f"{'ratio minisbert / fit':<28} {results['minisbert'] / fit:8.2f}x")
        print(f"{'ratio padded batch / fit':<28} {results['minisbert, padded batch'] / fit:8.2f}x")
        print(f"{'gain from packing':<28} {results['minisbert'] / results['minisbert, padded batch']:8.2f}x")
        print(f"{'gain from the fused AdamW':<28} {results['minisbert'] / results['minisbert, written-out AdamW']:8.2f}x")


if __name__ == "__main__":
    main()
