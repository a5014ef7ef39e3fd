"""Evaluate a sentence model on STS12-16, the STS benchmark and SICK-R, as Table 1 of the SBERT paper.

Prints Spearman's rank correlation x 100 between the cosine similarity of the two sentences' embeddings and the
gold score, per set, and the average. Sets whose files are missing under --data-dir show '-'.
With --split, evaluates one STS benchmark split instead and prints Spearman and Pearson.
"""

import argparse
import sys
from pathlib import Path

from minisbert import SentenceTransformer
from minisbert.checkpoint import DEFAULT_MODEL
from minisbert.data import DataError, default_data_dir, find_sts_benchmark, read_sts_benchmark
from minisbert.cli import HelpFormatter, run
from minisbert.evaluate import format_table, sts_correlations, table


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL, help="a model folder or hub id")
    parser.add_argument("--data-dir", type=Path, default=default_data_dir(),
                        help="holds stsbenchmark/, sts12-16/ and sick/ ($MINISBERT_DATA, else ./data)")
    parser.add_argument("--split", choices=["train", "dev", "test"], help="one STS benchmark split only")
    parser.add_argument("--batch-size", type=int, default=32, help="texts per forward pass")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16", "int8", "auto"],
                        help="arithmetic of the encoder (bf16: CPU or GPU, fp16: GPU, on a CPU no faster than fp32, "
                             "int8: the linear layers on an x86 CPU, auto: bf16 where it is fast, else fp32)")
    args = parser.parse_args()
    if args.batch_size < 1:
        parser.error(f"--batch-size must be at least 1, not {args.batch_size}")
    progress = sys.stderr.isatty()
    model = SentenceTransformer(args.model, device=args.device)
    if args.split:
        path = find_sts_benchmark(args.split, args.data_dir)
        if path is None:
            raise DataError(f"no sts-{args.split}.csv under {args.data_dir} or {args.data_dir / 'stsbenchmark'}")
        scores = sts_correlations(model, read_sts_benchmark(path), args.batch_size, args.dtype, progress)
        print(f"STS benchmark {args.split}: Spearman {100 * scores['spearman']:.2f}  Pearson {100 * scores['pearson']:.2f}")
        return
    row = table(model, args.data_dir, args.batch_size, args.dtype, progress)
    if row["Avg."] is None:
        raise DataError(f"none of the Table 1 sets (STS12-16, STS benchmark, SICK-R) is under {args.data_dir}; "
                        "pass --data-dir or set MINISBERT_DATA")
    print(format_table(Path(args.model).name, row))
    missing = [name for name, value in row.items() if value is None]
    if missing:
        print(f"note: {', '.join(missing)} not found under {args.data_dir}; the average is over the others",
              file=sys.stderr)


if __name__ == "__main__":
    run(main, "evaluate.py")
