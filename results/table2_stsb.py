"""Table 2 of the paper: fine-tuning on the STS benchmark train set with the regression objective (cosine similarity,
MSE against gold / 5), then Spearman x 100 on its test set; minisbert's train.py next to sentence-transformers'
trainer, with the same recipe and seeds: all-MiniLM-L6-v2, 4 epochs, batch 16, lr 2e-5, warmup over 10% of the
steps then linear decay, weight decay 0.01, gradients clipped at 1. The dev set is evaluated every --eval-steps, for
the curve of each run.

    python results/table2_stsb.py                            # seeds 1 2 3, both libraries (94 min on 2 cores)
    python results/table2_stsb.py --seeds 1 --max-steps 2 --eval-steps 1 --json /tmp/t2.json   # a tiny check (CI)

sentence-transformers' side uses SentenceTransformerTrainer (what fit() runs; fit() itself takes no seed), with
datasets and accelerate installed (pip install -e ".[results]"). Writes results/table2.json.

Duration on the project's 2-core CPU (2026-11-27): a run is 1,440 steps of 16 pairs plus 16 dev evaluations, 12
minutes for minisbert and 18 for sentence-transformers; the three seeds of both libraries took 94 minutes.
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from common import ROOT, Clock, default_data, run_record, write_json

from minisbert.checkpoint import default_model_folder
from minisbert.data import read_sts_benchmark


def minisbert_run(args, seed: int) -> dict:
    """train.py as a user runs it; the dev curve and the test score from its metrics.jsonl."""
    with tempfile.TemporaryDirectory() as output:
        command = [sys.executable, str(ROOT / "train.py"), "--data", "stsb", "--data-dir", str(args.data),
                   "--loss", "cosine", "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
                   "--lr", str(args.lr), "--warmup", "0.1", "--seed", str(seed), "--eval-steps",
                   str(args.eval_steps), "--output", output]
        if args.max_steps:
            command += ["--max-steps", str(args.max_steps)]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        records = [json.loads(line) for line in (Path(output) / "metrics.jsonl").read_text().splitlines()]
    dev = {r["step"]: 100 * r["stsb_dev_spearman"] for r in records if "stsb_dev_spearman" in r}
    test = [100 * r["stsb_test_spearman"] for r in records if "stsb_test_spearman" in r]
    return {"dev_curve": sorted(dev.items()), "test_before": test[0], "test": test[-1]}


def reference_run(args, seed: int) -> dict:
    """sentence-transformers' trainer with the same recipe; the dev curve from its evaluator, the test score after."""
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    try:
        from sentence_transformers.sentence_transformer.evaluation import EmbeddingSimilarityEvaluator
        from sentence_transformers.sentence_transformer.losses import CosineSimilarityLoss
    except ImportError:  # sentence-transformers before 6.1
        from sentence_transformers.evaluation import EmbeddingSimilarityEvaluator
        from sentence_transformers.losses import CosineSimilarityLoss

    def evaluator(split):
        examples = read_sts_benchmark(args.data / "stsbenchmark" / f"sts-{split}.csv")
        return EmbeddingSimilarityEvaluator([e.texts[0] for e in examples], [e.texts[1] for e in examples],
                                            [e.label / 5 for e in examples], name=f"sts-{split}")

    train = read_sts_benchmark(args.data / "stsbenchmark" / "sts-train.csv")
    dataset = Dataset.from_dict({"sentence1": [e.texts[0] for e in train], "sentence2": [e.texts[1] for e in train],
                                 "score": [e.label / 5 for e in train]})
    model = SentenceTransformer(str(default_model_folder()), device="cpu")
    test = evaluator("test")
    test_before = 100 * test(model)["sts-test_spearman_cosine"]
    with tempfile.TemporaryDirectory() as output:
        training_args = SentenceTransformerTrainingArguments(
            output_dir=output, num_train_epochs=args.epochs, max_steps=args.max_steps or -1,
            per_device_train_batch_size=args.batch_size, learning_rate=args.lr, warmup_ratio=0.1,
            lr_scheduler_type="linear", weight_decay=0.01, max_grad_norm=1.0, seed=seed, eval_strategy="steps",
            eval_steps=args.eval_steps, save_strategy="no", logging_strategy="no", report_to=[], use_cpu=True,
            disable_tqdm=True)
        trainer = SentenceTransformerTrainer(model=model, args=training_args, train_dataset=dataset,
                                             loss=CosineSimilarityLoss(model), evaluator=evaluator("dev"))
        trainer.train()
        dev = {entry["step"]: 100 * entry["eval_sts-dev_spearman_cosine"] for entry in trainer.state.log_history
               if "eval_sts-dev_spearman_cosine" in entry}
        dev[trainer.state.global_step] = 100 * evaluator("dev")(model)["sts-dev_spearman_cosine"]
    return {"dev_curve": sorted(dev.items()), "test_before": test_before,
            "test": 100 * test(model)["sts-test_spearman_cosine"]}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=default_data())
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument("--eval-steps", type=int, default=90, help="dev evaluations for the curves")
    parser.add_argument("--max-steps", type=int, help="stop early (a quick check)")
    parser.add_argument("--libraries", nargs="+", default=["minisbert", "sentence_transformers"])
    parser.add_argument("--json", type=Path, default=ROOT / "results" / "table2.json")
    args = parser.parse_args()
    runners = {"minisbert": minisbert_run, "sentence_transformers": reference_run}
    record = run_record(args, base_model="all-MiniLM-L6-v2", train_pairs=5749, runs=[])
    for seed in args.seeds:
        for library in args.libraries:
            clock = Clock()
            result = runners[library](args, seed)
            record["runs"].append({"library": library, "seed": seed, **result, "seconds": clock.seconds()})
            print(f"{library:<22} seed {seed}: test Spearman {result['test_before']:.2f} -> {result['test']:.2f}, "
                  f"last dev {result['dev_curve'][-1][1]:.2f}  ({clock.seconds():.0f} s)", flush=True)
            write_json(args.json, record)  # after every run: a long table keeps what it has


if __name__ == "__main__":
    main()
