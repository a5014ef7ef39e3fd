"""Table 1 of the paper: Spearman x 100 of cosine similarity against gold scores on STS12-16, the STS benchmark test set
and SICK-R, without training on them. For each model, minisbert's evaluation next to sentence-transformers' own
EmbeddingSimilarityEvaluator on the same model and the same pairs; the two must agree to 0.01 (exit status 1 if not).

    python results/table1_unsupervised.py                     # all-MiniLM-L6-v2, and all-mpnet-base-v2 if built
    python results/table1_unsupervised.py --limit 50 --json /tmp/t1.json   # a tiny check (CI)

all-mpnet-base-v2 is evaluated where weights/all-mpnet-base-v2 exists
(bash ../shared/models/all-mpnet-base-v2.sh weights/all-mpnet-base-v2). Writes results/table1.json.
"""

import argparse
from pathlib import Path

from common import ROOT, Clock, default_data, run_record, write_json

from minisbert import SentenceTransformer
from minisbert.checkpoint import default_model_folder
from minisbert.evaluate import sts_correlations, table_sets

TOLERANCE = 0.01  # Spearman x 100


def reference_spearman(model, examples, batch_size: int) -> float:
    """sentence-transformers' evaluator: Spearman of cosine similarity, x 100."""
    try:
        from sentence_transformers.sentence_transformer.evaluation import EmbeddingSimilarityEvaluator
    except ImportError:  # sentence-transformers before 6.1
        from sentence_transformers.evaluation import EmbeddingSimilarityEvaluator
    evaluator = EmbeddingSimilarityEvaluator([e.texts[0] for e in examples], [e.texts[1] for e in examples],
                                             [e.label for e in examples], batch_size=batch_size, name="t")
    return 100 * evaluator(model)["t_spearman_cosine"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=default_data(), help="holds sts12-16/, stsbenchmark/, sick/")
    parser.add_argument("--models", nargs="+", help="model folders (default: all-MiniLM-L6-v2, all-mpnet-base-v2)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--limit", type=int, help="the first N pairs of each set only (a quick check)")
    parser.add_argument("--json", type=Path, default=ROOT / "results" / "table1.json")
    args = parser.parse_args()
    from sentence_transformers import SentenceTransformer as Reference

    models = [Path(m) for m in args.models] if args.models else [default_model_folder()] + [
        folder for folder in [ROOT / "weights" / "all-mpnet-base-v2"] if (folder / "modules.json").exists()]
    sets = {name: examples[:args.limit] for name, examples in table_sets(args.data).items() if examples}
    record = run_record(args, sets={name: len(examples) for name, examples in sets.items()}, models={})
    failures = []
    for folder in models:
        name = "all-MiniLM-L6-v2" if folder == default_model_folder() else folder.name
        clock = Clock()
        ours, theirs = SentenceTransformer(folder), Reference(str(folder), device="cpu")
        rows = {}
        for set_name, examples in sets.items():
            mine = 100 * sts_correlations(ours, examples, args.batch_size)["spearman"]
            reference = reference_spearman(theirs, examples, args.batch_size)
            rows[set_name] = {"minisbert": mine, "sentence_transformers": reference, "difference": mine - reference}
            print(f"{name:<20} {set_name:<7} minisbert {mine:6.2f}  sentence-transformers {reference:6.2f}  "
                  f"difference {mine - reference:+.4f}", flush=True)
            if abs(mine - reference) > TOLERANCE:
                failures.append(f"{name} {set_name}: {mine:.4f} against {reference:.4f}")
        average = {library: sum(row[library] for row in rows.values()) / len(rows)
                   for library in ("minisbert", "sentence_transformers")}
        rows["Avg."] = {**average, "difference": average["minisbert"] - average["sentence_transformers"]}
        record["models"][name] = {"folder": str(folder), "rows": rows, "seconds": clock.seconds()}
    record["failures"] = failures
    write_json(args.json, record)
    if failures:
        raise SystemExit(f"minisbert and sentence-transformers differ by more than {TOLERANCE}: {failures}")


if __name__ == "__main__":
    main()
