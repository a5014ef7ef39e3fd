"""sentence-transformers' fit with the recipe that README's fine-tuning figure uses, for comparison.

    python benchmarks/stsb_reference.py [--epochs 4] [--batch-size 16] [--lr 2e-5]

Fine-tunes all-MiniLM-L6-v2 on the STS benchmark train set with CosineSimilarityLoss (gold scores / 5), warmup
over 10% of the steps, then prints its EmbeddingSimilarityEvaluator scores on the test set before and after.
Needs sentence-transformers, `datasets` and `accelerate`.
"""

import argparse
import math
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from minisbert.checkpoint import default_model_folder  # noqa: E402
from minisbert.data import read_sts_benchmark  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("MINISBERT_DATA", "../shared/data")))
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-5)
    args = parser.parse_args()
    from sentence_transformers import InputExample, SentenceTransformer
    from sentence_transformers.sentence_transformer.evaluation import EmbeddingSimilarityEvaluator
    from sentence_transformers.sentence_transformer.losses import CosineSimilarityLoss
    from torch.utils.data import DataLoader

    train = read_sts_benchmark(args.data / "stsbenchmark" / "sts-train.csv")
    test = read_sts_benchmark(args.data / "stsbenchmark" / "sts-test.csv")
    evaluator = EmbeddingSimilarityEvaluator([e.texts[0] for e in test], [e.texts[1] for e in test],
                                             [e.label / 5 for e in test], name="sts-test")
    model = SentenceTransformer(str(default_model_folder()), device="cpu")
    print(f"before: Spearman {100 * evaluator(model)['sts-test_spearman_cosine']:.2f}", flush=True)
    loader = DataLoader([InputExample(texts=list(e.texts), label=e.label / 5) for e in train], shuffle=True,
                        batch_size=args.batch_size)
    with tempfile.TemporaryDirectory() as scratch:
        os.chdir(scratch)  # fit() writes its Trainer's files under the working directory
        model.fit(train_objectives=[(loader, CosineSimilarityLoss(model))], epochs=args.epochs,
                  warmup_steps=math.ceil(0.1 * len(loader) * args.epochs), optimizer_params={"lr": args.lr},
                  show_progress_bar=False)
    print(f"after {args.epochs} epochs: Spearman {100 * evaluator(model)['sts-test_spearman_cosine']:.2f}")


if __name__ == "__main__":
    main()
