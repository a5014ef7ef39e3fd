"""results/: every table's script in a tiny configuration (the full runs are too long for CI), the page that
report.py fills from their JSON, and the paper's full-setup commands of results/README.md run on the shared SNLI
sample with a tiny model in place of BERT."""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(*command, cwd=ROOT):
    result = subprocess.run([sys.executable, *map(str, command)], cwd=cwd, capture_output=True, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


@pytest.fixture(scope="module")
def short_sts_data(tmp_path_factory, data_dir) -> Path:
    """The shared data with the STS benchmark's splits cut to their first 100 pairs: the tiny runs check the
    scripts' plumbing, and train.py and the trainer evaluate the dev or test set before, during and after
    training (most of their time with the whole sets)."""
    folder = tmp_path_factory.mktemp("data")
    for entry in data_dir.iterdir():
        if entry.name != "stsbenchmark":
            (folder / entry.name).symlink_to(entry)
    (folder / "stsbenchmark").mkdir()
    for split in ("train", "dev", "test"):
        lines = (data_dir / "stsbenchmark" / f"sts-{split}.csv").read_text(encoding="utf-8").splitlines(True)
        (folder / "stsbenchmark" / f"sts-{split}.csv").write_text("".join(lines[:100]), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def tables(tmp_path_factory, data_dir, short_sts_data, minilm_folder) -> Path:
    """The four tables in tiny configurations, their JSON in one folder with a copy of the results page."""
    folder = tmp_path_factory.mktemp("results")
    shutil.copy(ROOT / "results" / "README.md", folder / "README.md")
    run("results/table1_unsupervised.py", "--data", data_dir, "--models", minilm_folder, "--limit", 30,
        "--json", folder / "table1.json")
    data = ["--data", short_sts_data]
    run("results/table7_speed.py", *data, "--limit", 64, "--repeats", 1, "--json", folder / "table7.json")
    run("results/table6_ablation.py", *data, "--max-steps", 2, "--batch-size", 4, "--dev-limit", 30,
        "--runs", "mean:u,v,|u-v|", "cls:|u-v|", "--json", folder / "table6.json")
    run("results/table2_stsb.py", *data, "--seeds", 1, "--max-steps", 2, "--eval-steps", 1, "--batch-size", 4,
        "--json", folder / "table2.json")
    return folder


def test_table1_puts_both_libraries_side_by_side_and_they_agree(tables):
    record = json.loads((tables / "table1.json").read_text())
    rows = next(iter(record["models"].values()))["rows"]
    assert set(rows) == {"STS12", "STS13", "STS14", "STS15", "STS16", "STSb", "SICK-R", "Avg."}
    assert all(abs(row["difference"]) <= 0.01 for row in rows.values())
    assert record["sets"]["STSb"] == 30 and not record["failures"]


def test_table2_trains_both_libraries_with_the_same_seed_and_records_the_dev_curves(tables):
    runs = json.loads((tables / "table2.json").read_text())["runs"]
    assert [(r["library"], r["seed"]) for r in runs] == [("minisbert", 1), ("sentence_transformers", 1)]
    for r in runs:
        assert [step for step, _ in r["dev_curve"]] == [1, 2], r
        assert 0 < r["test"] <= 100 and 0 < r["test_before"] <= 100


def test_table6_and_table7_hold_one_row_per_run(tables):
    rows6 = json.loads((tables / "table6.json").read_text())["rows"]
    assert [(r["pooling"], r["concatenation"]) for r in rows6] == [("mean", "u,v,|u-v|"), ("cls", "|u-v|")]
    rows7 = json.loads((tables / "table7.json").read_text())["rows"]
    assert set(rows7) == {"sorted", "unsorted"} and all(rows7[k]["minisbert"] > 0 for k in rows7)


def test_report_fills_every_table_of_the_page_from_the_json_files(tables):
    run("results/report.py", "--folder", tables)
    page = (tables / "README.md").read_text()
    assert "Not run yet" not in page
    table1 = json.loads((tables / "table1.json").read_text())
    stsb = next(iter(table1["models"].values()))["rows"]["STSb"]["minisbert"]
    assert f"{stsb:.2f}" in page
    for png in ("table2_dev_curves.png", "table6_ablation.png"):
        assert (tables / png).stat().st_size > 1000 and png in page


def paper_setup_commands() -> list[list[str]]:
    """The train.py and evaluate.py commands of the page's full-setup block, as argument lists."""
    page = (ROOT / "results" / "README.md").read_text()
    block = page.split("## The paper's full setup", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    joined = re.sub(r"\\\n\s*", " ", block)
    return [shlex.split(line.split("#", 1)[0]) for line in joined.splitlines() if line.startswith("python ")]


def test_the_papers_full_setup_commands_run_on_the_sample_with_a_tiny_model(tmp_path, data_dir, tiny_bert):
    commands = paper_setup_commands()
    assert [c[1] for c in commands] == ["train.py", "evaluate.py"] * 3
    swaps = {"allnli": str(data_dir / "nli" / "snli_1.0_train.sample20k.jsonl"), "bert-base-uncased": str(tiny_bert)}
    for command in commands:
        command = [swaps.get(word, word) for word in command if word != "--download"]
        if command[1] == "train.py":
            command += ["--data-dir", str(data_dir), "--max-steps", "2", "--eval-steps", "0"]
        else:
            command += ["--data-dir", str(data_dir)]
        run(ROOT / command[1], *command[2:], cwd=tmp_path)
    assert (tmp_path / "sbert-nli-stsb-base" / "modules.json").exists()
