"""Table 6 of the paper: the softmax objective's pooling and concatenation, trained on NLI and evaluated on the
STS benchmark dev set (Spearman x 100 of cosine similarity).

    python results/table6_ablation.py                       # 9 runs of train.py, 200 steps of 16 SNLI pairs each
    python results/table6_ablation.py --max-steps 2 --batch-size 4 --dev-limit 40 --runs mean:u,v,|u-v| cls:u,v,|u-v|
        --json /tmp/t6.json                                 # a tiny check (CI)

Each run is `python train.py --data <snli sample> --loss softmax --pooling P --concat C --seed S` (as a user would
run it), from all-MiniLM-L6-v2; the saved model is then evaluated on the dev set. The paper varies the pooling with
(u, v, |u-v|) and the concatenation with MEAN pooling. Writes results/table6.json. The default 200 steps (3,200
pairs) keep the nine runs to about 15 minutes on a 2-core CPU; --max-steps 1250 takes the whole 20,000-pair sample.
"""

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from common import ROOT, Clock, default_data, run_record, write_json

from minisbert import SentenceTransformer
from minisbert.data import read_sts_benchmark
from minisbert.evaluate import sts_correlations

# (pooling, concatenation) in the paper's order: the pooling strategies with (u, v, |u-v|), then the concatenations
RUNS = [("mean", "u,v,|u-v|"), ("max", "u,v,|u-v|"), ("cls", "u,v,|u-v|"),
        ("mean", "u,v"), ("mean", "|u-v|"), ("mean", "u*v"), ("mean", "|u-v|,u*v"), ("mean", "u,v,u*v"),
        ("mean", "u,v,|u-v|,u*v")]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=default_data())
    parser.add_argument("--train", default="nli/snli_1.0_train.sample20k.jsonl", help="under --data")
    parser.add_argument("--max-steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--runs", nargs="+", help="pooling:concatenation pairs (default: the paper's nine)")
    parser.add_argument("--dev-limit", type=int, help="evaluate on the first N dev pairs only")
    parser.add_argument("--json", type=Path, default=ROOT / "results" / "table6.json")
    args = parser.parse_args()
    runs = [tuple(run.split(":", 1)) for run in args.runs] if args.runs else RUNS
    dev = read_sts_benchmark(args.data / "stsbenchmark" / "sts-dev.csv")[:args.dev_limit]
    base = SentenceTransformer()
    record = run_record(args, base_model="all-MiniLM-L6-v2", train_data=args.train,
                        train_pairs=args.max_steps * args.batch_size, dev_pairs=len(dev),
                        base_dev_spearman=100 * sts_correlations(base, dev)["spearman"], rows=[])
    print(f"all-MiniLM-L6-v2 before training: dev Spearman {record['base_dev_spearman']:.2f}", flush=True)
    for pooling, concatenation in runs:
        clock = Clock()
        with tempfile.TemporaryDirectory() as output:
            subprocess.run([sys.executable, str(ROOT / "train.py"), "--data", str(args.data / args.train),
                            "--data-dir", str(args.data), "--loss", "softmax", "--pooling", pooling,
                            "--concat", concatenation, "--max-steps", str(args.max_steps), "--batch-size",
                            str(args.batch_size), "--seed", str(args.seed), "--eval-steps", "0",
                            "--output", output], check=True, stdout=subprocess.DEVNULL)
            spearman = 100 * sts_correlations(SentenceTransformer(output), dev)["spearman"]
        record["rows"].append({"pooling": pooling, "concatenation": concatenation, "dev_spearman": spearman,
                               "seconds": clock.seconds()})
        print(f"{pooling:<5} ({concatenation}): dev Spearman {spearman:.2f}  ({clock.seconds():.0f} s)", flush=True)
        write_json(args.json, record)  # after every run: a long table keeps what it has


if __name__ == "__main__":
    main()
