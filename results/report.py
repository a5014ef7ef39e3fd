"""Fill results/README.md from the tables' JSON files: each table between its markers, and the plots (PNG, with
matplotlib: pip install -e ".[results]") beside it. Only what the JSON files hold goes in; a table not yet run says so.

    python results/report.py                 # after any of the table scripts
    python results/report.py --folder /tmp/r # another folder of JSON files (and README.md to fill)
"""

import argparse
import json
import re
import statistics
from pathlib import Path

from common import ROOT

# the paper's figures (Reimers & Gurevych 2019) for the same rows, where it has them
PAPER_TABLE6_POOLING = {"mean": 80.78, "max": 79.07, "cls": 79.80}
PAPER_TABLE6_CONCAT = {"u,v": 66.04, "|u-v|": 69.78, "u*v": 70.54, "|u-v|,u*v": 78.37, "u,v,u*v": 77.44,
                       "u,v,|u-v|": 80.78, "u,v,|u-v|,u*v": 80.44}


def duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def cell(text: str) -> str:
    """Text for a Markdown table cell: its pipes escaped."""
    return text.replace("|", "\\|")


def setup_line(record: dict) -> str:
    return (f"Run on {record['date']}, {record['device']}, torch {record['torch']}, sentence-transformers "
            f"{record['sentence_transformers']}: `python results/{record['command']}`.")


def table1(record: dict) -> str:
    sets = list(record["sets"])
    lines = [setup_line(record), "", "Pairs per set: " + ", ".join(f"{s} {n:,}" for s, n in record["sets"].items()) + ".",
             "", "| Model | library | " + " | ".join(sets) + " | Avg. |", "|---|---|" + "---:|" * (len(sets) + 1)]
    notes = []
    for name, model in record["models"].items():
        rows = model["rows"]
        for library in ("minisbert", "sentence_transformers"):
            cells = " | ".join(f"{rows[s][library]:.2f}" for s in sets + ["Avg."])
            lines.append(f"| {name} | {library.replace('_', '-')} | {cells} |")
        largest = max(abs(rows[s]["difference"]) for s in sets)
        notes.append(f"{name}: largest difference {largest:.4f}, both libraries in {duration(model['seconds'])}")
    return "\n".join(lines + ["", "; ".join(notes) + "."])


def table2(record: dict, folder: Path) -> str:
    lines = [setup_line(record), "", "| library | seeds | test Spearman before | after: mean ± sd | per seed | time per run |",
             "|---|---|---:|---:|---|---:|"]
    by_library = {}
    for run in record["runs"]:
        by_library.setdefault(run["library"], []).append(run)
    for library, runs in by_library.items():
        tests = [run["test"] for run in runs]
        spread = f" ± {statistics.stdev(tests):.2f}" if len(tests) > 1 else ""
        lines.append(f"| {library.replace('_', '-')} | {', '.join(str(r['seed']) for r in runs)} | "
                     f"{runs[0]['test_before']:.2f} | {statistics.mean(tests):.2f}{spread} | "
                     f"{', '.join(f'{t:.2f}' for t in tests)} | "
                     f"{duration(statistics.mean(r['seconds'] for r in runs))} |")
    if plot_curves(by_library, folder / "table2_dev_curves.png"):
        lines += ["", "![dev Spearman during fine-tuning, each seed](table2_dev_curves.png)"]
    return "\n".join(lines)


def table6(record: dict, folder: Path) -> str:
    lines = [setup_line(record), "", f"Base model {record['base_model']}, {record['train_pairs']:,} pairs of "
             f"{record['train_data']} (one pass), STS benchmark dev ({record['dev_pairs']:,} pairs); before training: "
             f"{record['base_dev_spearman']:.2f}.", "",
             "| pooling | concatenation | dev Spearman | paper | time |", "|---|---|---:|---:|---:|"]
    for row in record["rows"]:
        paper = (PAPER_TABLE6_POOLING.get(row["pooling"]) if row["concatenation"] == "u,v,|u-v|"
                 else PAPER_TABLE6_CONCAT.get(row["concatenation"]) if row["pooling"] == "mean" else None)
        lines.append(f"| {row['pooling'].upper()} | {cell('(' + row['concatenation'] + ')')} | {row['dev_spearman']:.2f} | "
                     f"{'' if paper is None else f'{paper:.2f}'} | {duration(row['seconds'])} |")
    if plot_bars(record["rows"], record["base_dev_spearman"], folder / "table6_ablation.png"):
        lines += ["", "![dev Spearman per pooling and concatenation](table6_ablation.png)"]
    return "\n".join(lines)


def table7(record: dict, gpu: dict | None) -> str:
    rows = record["rows"]
    took = f", {duration(record['seconds'])} in all" if "seconds" in record else ""
    lines = [setup_line(record), "", f"{record['sentences']:,} sentences, {record['model']}, {record['precision']}, "
             f"batch {record['arguments']['batch_size']}, median of {record['arguments']['repeats']} runs{took}.", "",
             "| batches | sentence-transformers | minisbert | ratio |", "|---|---:|---:|---:|"]
    for label in ("unsorted", "sorted"):
        lines.append(f"| {label} | {rows[label]['sentence_transformers']:.0f} sent/s | {rows[label]['minisbert']:.0f} "
                     f"sent/s | {rows[label]['ratio']:.2f}x |")
    lines.append(f"| gain from sorting | {record['sorting_gain']['sentence_transformers']:.2f}x | "
                 f"{record['sorting_gain']['minisbert']:.2f}x | |")
    if gpu:
        lines += ["", f"On a GPU ({gpu['device']}, {gpu['date']}, `bash benchmarks/gpu_check.sh`, sorted batches, "
                  "each library at its best dtype and batch size):", "",
                  "| model shape | sentence-transformers | minisbert | ratio |", "|---|---:|---:|---:|"]
        for shape in ("minilm", "bert-base"):
            run = gpu[f"encode_{shape}"]
            theirs, ours = run["best_sentence_transformers"], run["best_minisbert"]
            lines.append(f"| {shape} | {theirs['sentence_transformers']:,.0f} sent/s ({theirs['dtype']}, "
                         f"{theirs['batch_size']}) | {ours['minisbert']:,.0f} sent/s ({ours['dtype']}, "
                         f"{ours['batch_size']}) | {run['ratio_best_to_best']:.2f}x |")
    return "\n".join(lines)


def plot_curves(by_library: dict, path: Path) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    figure, axis = plt.subplots(figsize=(6, 3.5), dpi=100)
    for (library, runs), color in zip(by_library.items(), ("tab:blue", "tab:orange")):
        for i, run in enumerate(runs):
            steps, values = zip(*run["dev_curve"])
            axis.plot(steps, values, color=color, alpha=0.8, label=library.replace("_", "-") if i == 0 else None)
    axis.set_xlabel("step")
    axis.set_ylabel("STS benchmark dev Spearman x 100")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return True


def plot_bars(rows: list, before: float, path: Path) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    figure, axis = plt.subplots(figsize=(7, 3.5), dpi=100)
    labels = [f"{r['pooling'].upper()}\n({r['concatenation']})" for r in rows]
    axis.bar(range(len(rows)), [r["dev_spearman"] for r in rows], color="tab:blue")
    axis.set_xticks(range(len(rows)), labels, fontsize=7)
    axis.axhline(before, color="gray", linestyle="--", label="before training")
    axis.legend(fontsize=8)
    values = [r["dev_spearman"] for r in rows] + [before]
    axis.set_ylim(max(0, min(values) - 5), max(values) + 1)
    axis.set_ylabel("STS benchmark dev Spearman x 100")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return True


def fill(text: str, name: str, content: str) -> str:
    pattern = re.compile(rf"(<!-- {name} -->\n).*?(<!-- /{name} -->)", re.S)
    if not pattern.search(text):
        raise SystemExit(f"README.md has no <!-- {name} --> ... <!-- /{name} --> markers")
    return pattern.sub(lambda m: m.group(1) + content + "\n" + m.group(2), text)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", type=Path, default=ROOT / "results")
    args = parser.parse_args()
    readme = args.folder / "README.md"
    text = readme.read_text()

    def load(name):
        path = args.folder / f"{name}.json"
        return json.loads(path.read_text()) if path.exists() else None

    # the newest GPU check that measured encoding (some runs measure search only: gpu_check.py --parts)
    gpu_runs = [json.loads(f.read_text()) for f in sorted((ROOT / "benchmarks" / "results").glob("gpu_check_*.json"))]
    gpu = next((run for run in reversed(gpu_runs) if "encode_minilm" in run), None)
    not_run = "Not run yet: the command above writes `{name}.json`, then `python results/report.py` fills this in."
    sections = {"table1": lambda r: table1(r), "table2": lambda r: table2(r, args.folder),
                "table6": lambda r: table6(r, args.folder), "table7": lambda r: table7(r, gpu)}
    for name, render in sections.items():
        record = load(name)
        text = fill(text, name, render(record) if record else not_run.format(name=name))
    readme.write_text(text)
    print(f"filled {readme}")


if __name__ == "__main__":
    main()
