"""train.py as a user runs it: end to end on STSb and the SNLI sample, resume after a kill, a NaN stop, and
torchrun with two gloo processes against one process with the same global batch."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import snli_mirror
from safetensors.torch import load_file

from minisbert.data import nli_triplets, read_nli

ROOT = Path(__file__).resolve().parents[1]


def train(*args, env=None, wait=True, torchrun=False, cwd=ROOT):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"] if torchrun \
        else [sys.executable]
    command = launcher + [str(ROOT / "train.py"), *map(str, args)]
    environment = {**os.environ, **(env or {})}
    if not wait:
        return subprocess.Popen(command, cwd=cwd, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return subprocess.run(command, cwd=cwd, env=environment, capture_output=True, text=True, timeout=900)


def metrics(output: Path) -> list[dict]:
    return [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]


def weights(folder: Path) -> dict:
    return load_file(folder / "model.safetensors")


@pytest.fixture(scope="module")
def snli_sample(data_dir) -> Path:
    return data_dir / "nli" / "snli_1.0_train.sample20k.jsonl"


@pytest.fixture
def no_evaluation(tmp_path) -> dict:
    # MINISBERT_DATA pointing at an empty folder: no STS benchmark to evaluate on, which keeps these runs short
    (tmp_path / "empty").mkdir()
    return {"MINISBERT_DATA": str(tmp_path / "empty")}


def test_stsb_run_end_to_end_writes_a_model_sentence_transformers_loads(tmp_path, data_dir):
    from sentence_transformers import SentenceTransformer as Reference

    from minisbert import SentenceTransformer

    output = tmp_path / "stsb-model"
    run = train("--data", "stsb", "--max-steps", 6, "--eval-steps", 3, "--checkpoint-steps", 3, "--log-steps", 2,
                "--output", output, env={"MINISBERT_DATA": str(data_dir)})
    assert run.returncode == 0, run.stderr
    records = metrics(output)
    assert [r["step"] for r in records if "loss" in r] == [2, 4, 6]
    assert [r["step"] for r in records if "stsb_dev_spearman" in r] == [3, 6]
    before, after = [r["stsb_test_spearman"] for r in records if "stsb_test_spearman" in r]
    assert before != after and 0.7 < after < 0.9
    assert sorted(p.name for p in (output / "checkpoints").iterdir()) == ["step-00000003", "step-00000006"]
    texts = ["A man is playing a guitar.", "Someone plays music.", "The cat sleeps."]
    ours = SentenceTransformer(output).encode(texts)
    np.testing.assert_allclose(Reference(str(output), device="cpu").encode(texts), ours, atol=1e-5, rtol=0)
    assert not np.allclose(ours, SentenceTransformer().encode(texts), atol=1e-4)  # it changed the model


def test_snli_sample_run_from_its_data_dir(tmp_path, data_dir):
    output = tmp_path / "nli-model"
    run = train("--data", "snli", "--data-dir", data_dir / "nli", "--max-steps", 4, "--log-steps", 1,
                "--output", output, env={"MINISBERT_DATA": str(tmp_path / "nowhere")})
    assert run.returncode == 0, run.stderr
    assert "20,000 training examples, loss softmax" in run.stderr
    records = metrics(output)
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4]
    assert len([r for r in records if "stsb_test_spearman" in r]) == 2  # found beside the nli folder
    assert (output / "model.safetensors").exists()


@pytest.mark.parametrize("layout", ["triplets", "classes", "scores"])
def test_a_file_of_sentence_transformers_dataset_columns_trains_as_the_data_it_holds(layout, tmp_path, tiny_bert,
                                                                                     snli_sample, data_dir,
                                                                                     no_evaluation):
    # the same examples in the same order as JSON lines of named columns, with the default loss of their kind: the
    # SNLI sample's triplets (in-batch negatives), its pairs with class ids (softmax), STSb's pairs with scores
    # scaled to [0, 1] (cosine); the weights must come out as those of the run on the original file
    from minisbert.data import read_sts_benchmark
    if layout == "scores":
        original, loss = data_dir / "stsbenchmark" / "sts-train.csv", "cosine"
        rows = [{"sentence1": a, "sentence2": b, "score": e.label / 5}
                for e in read_sts_benchmark(original) for a, b in [e.texts]]
    elif layout == "classes":
        original, loss = snli_sample, "softmax"
        rows = [{"premise": a, "hypothesis": b, "label": e.label} for e in read_nli(snli_sample) for a, b in [e.texts]]
    else:
        original, loss = snli_sample, "mnrl"
        rows = [dict(zip(("anchor", "positive", "negative"), e.texts)) for e in nli_triplets(read_nli(snli_sample))]
    columns = tmp_path / f"{layout}.jsonl"
    columns.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    options = ["--model", tiny_bert, "--max-steps", 5, "--eval-steps", 0, "--batch-size", 8]
    from_columns = train("--data", columns, *options, "--output", tmp_path / "columns", env=no_evaluation)
    assert from_columns.returncode == 0, from_columns.stderr
    assert f"loss {loss}" in from_columns.stderr
    from_original = train("--data", original, "--loss", loss, *options, "--output", tmp_path / "original",
                          env=no_evaluation)
    assert from_original.returncode == 0, from_original.stderr
    expected, got = weights(tmp_path / "original"), weights(tmp_path / "columns")
    assert expected.keys() == got.keys() and all(torch.equal(expected[name], got[name]) for name in expected)


@pytest.mark.parametrize("rows,loss,message", [
    ([{"anchor": "a", "positive": "b"}], "triplet", "--loss triplet needs three text columns .* has 2"),
    ([{"anchor": "a", "positive": "b"}], "softmax", r"--loss softmax does not fit .* \(anchors with positives and no "
                                                    r"labels\): it trains with --loss mnrl or triplet"),
    ([{"a": "x", "b": "y", "label": 1}], "mnrl", r"\(pairs with class labels\): it trains with --loss softmax"),
    ([{"a": "x", "b": "y", "label": 0}], None, "every label is 0; the softmax objective needs two classes or more"),
    ([{"a": "x", "b": "y", "score": 0.5}], "triplet", r"\(pairs with gold similarity scores\): it trains with --loss "
                                                      "cosine"),
])
def test_a_loss_that_does_not_fit_the_data_is_refused(rows, loss, message, tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    run = train("--data", path, *(["--loss", loss] if loss else []), "--output", tmp_path / "out")
    assert run.returncode != 0 and re.search(message, run.stderr), run.stderr[-2000:]


def test_resume_after_a_kill_ends_where_an_uninterrupted_run_does(tmp_path, tiny_bert, snli_sample, no_evaluation):
    options = ["--data", snli_sample, "--model", tiny_bert, "--max-steps", 600, "--checkpoint-steps", 50,
               "--log-steps", 1, "--eval-steps", 0]
    whole = train(*options, "--output", tmp_path / "whole", env=no_evaluation)
    assert whole.returncode == 0, whole.stderr

    interrupted = train(*options, "--output", tmp_path / "cut", env=no_evaluation, wait=False)
    first = tmp_path / "cut" / "checkpoints" / "step-00000050"
    deadline = time.time() + 300
    while not first.exists() and interrupted.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    interrupted.send_signal(signal.SIGKILL)
    interrupted.wait()
    assert interrupted.returncode == -signal.SIGKILL, "the run ended before it could be interrupted"

    resumed = train(*options, "--output", tmp_path / "cut", "--resume", env=no_evaluation)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stderr and "(step 600)" not in resumed.stderr
    expected, got = weights(tmp_path / "whole"), weights(tmp_path / "cut")
    for name in expected:  # dropout is on (0.1): equal results need the random state restored too
        assert torch.allclose(expected[name], got[name], atol=1e-6, rtol=0), name
    assert [r["loss"] for r in metrics(tmp_path / "cut")] == pytest.approx([r["loss"] for r in metrics(tmp_path / "whole")],
                                                                            abs=1e-6)


def test_a_loss_that_turns_nan_stops_and_keeps_the_last_good_checkpoint(tmp_path, tiny_bert, snli_sample,
                                                                        no_evaluation):
    from minisbert import SentenceTransformer

    output = tmp_path / "diverged"
    run = train("--data", snli_sample, "--model", tiny_bert, "--lr", "1e20", "--warmup", 0, "--max-steps", 50,
                "--checkpoint-steps", 1, "--output", output, env=no_evaluation)
    assert run.returncode == 1
    assert "the loss or its gradient is not finite at step" in run.stderr and "last good checkpoint is" in run.stderr
    kept = Path(run.stderr.split("last good checkpoint is ")[1].split(". ")[0])
    assert kept.parent == output / "checkpoints"
    model = SentenceTransformer(kept)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert not (output / "model.safetensors").exists()


def without_dropout(folder: Path, target: Path) -> Path:
    shutil.copytree(folder, target)
    config = json.loads((folder / "config.json").read_text())
    (target / "config.json").write_text(json.dumps({**config, "hidden_dropout_prob": 0.0,
                                                    "attention_probs_dropout_prob": 0.0}))
    return target


def uneven_sample(snli_sample: Path, target: Path, loss: str, count: int = 21) -> Path:
    """`count` training examples from the SNLI sample's sentences (21 = 8 + 8 + 5: the last global batch of 8 is
    split 3 + 2 between two processes). For mnrl each premise gets an entailed and a contradicted hypothesis."""
    rows = [json.loads(line) for line in snli_sample.read_text().splitlines()[:count + 1]]
    if loss == "mnrl":
        rows = [{"gold_label": label, "sentence1": row["sentence1"], "sentence2": hypothesis}
                for row, following in zip(rows, rows[1:])
                for label, hypothesis in (("entailment", row["sentence2"]), ("contradiction", following["sentence2"]))]
    target.write_text("".join(json.dumps(row) + "\n" for row in rows[:2 * count if loss == "mnrl" else count]))
    examples = read_nli(target)
    assert len(nli_triplets(examples) if loss == "mnrl" else examples) == count
    return target


@pytest.mark.parametrize("loss", ["softmax", "mnrl"])
def test_two_gloo_processes_equal_one_process_with_the_same_global_batch(tmp_path, tiny_bert, snli_sample,
                                                                         no_evaluation, loss):
    # a whole epoch whose last batch is split unevenly; mnrl's negatives are those of the global batch
    data = uneven_sample(snli_sample, tmp_path / "small.jsonl", loss)
    options = ["--data", data, "--loss", loss, "--model", without_dropout(tiny_bert, tmp_path / "tiny"),
               "--log-steps", 1, "--eval-steps", 0, "--device", "cpu", "--warmup", 0.3]
    single = train(*options, "--batch-size", 8, "--output", tmp_path / "one", env=no_evaluation)
    assert single.returncode == 0, single.stderr
    pair = train(*options, "--batch-size", 4, "--output", tmp_path / "two", env=no_evaluation, torchrun=True)
    assert pair.returncode == 0, pair.stderr
    assert "steps of 8 (2 processes)" in pair.stderr
    assert [r["loss"] for r in metrics(tmp_path / "two")] == pytest.approx([r["loss"] for r in metrics(tmp_path / "one")],
                                                                           abs=1e-5)
    expected, got = weights(tmp_path / "one"), weights(tmp_path / "two")
    for name in expected:
        assert torch.allclose(expected[name], got[name], atol=1e-5, rtol=0), name


def test_a_two_process_resume_with_dropout_ends_where_the_uninterrupted_run_does(tmp_path, tiny_bert, snli_sample,
                                                                                 no_evaluation):
    options = ["--data", snli_sample, "--model", tiny_bert, "--max-steps", 6, "--checkpoint-steps", 3,
               "--eval-steps", 0, "--batch-size", 4, "--device", "cpu", "--output", tmp_path / "out"]
    whole = train(*options, env=no_evaluation, torchrun=True)
    assert whole.returncode == 0, whole.stderr
    expected = weights(tmp_path / "out")
    shutil.rmtree(tmp_path / "out" / "checkpoints" / "step-00000006")  # as if killed after step 3's checkpoint
    resumed = train(*options, "--resume", env=no_evaluation, torchrun=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stderr
    got = weights(tmp_path / "out")
    for name in expected:  # dropout differs between the processes: each must get its own random state back
        assert torch.allclose(expected[name], got[name], atol=1e-6, rtol=0), name


def test_download_flag_fetches_the_missing_archive_then_trains(tmp_path, tiny_bert, snli_sample, no_evaluation):
    options = ["--data", "snli", "--data-dir", tmp_path / "data", "--model", tiny_bert, "--max-steps", 2,
               "--output", tmp_path / "out"]
    rows = "".join(snli_sample.read_text().splitlines(True)[:64])
    with snli_mirror(tmp_path / "mirror", rows) as (url, _):
        without = train(*options, env=no_evaluation)
        assert without.returncode == 1 and "--download" in without.stderr and "snli_1.0.zip" in without.stderr
        run = train(*options, "--download", env={**no_evaluation, "MINISBERT_DATA_MIRROR": url})
    assert run.returncode == 0, run.stderr
    assert "64 training examples" in run.stderr
    assert (tmp_path / "data" / "snli_1.0" / "snli_1.0_train.jsonl").exists()


# ---------------------------------------------------------------- nothing lost: the output folder, stops, resumes

def wait_for_records(output: Path, process, count: int) -> None:
    deadline = time.time() + 300
    while process.poll() is None and time.time() < deadline:
        if (output / "metrics.jsonl").exists() and len((output / "metrics.jsonl").read_text().splitlines()) >= count:
            return
        time.sleep(0.05)
    raise AssertionError("the run ended, or never logged, before it could be interrupted")


def test_output_in_a_folder_with_other_files_keeps_them(tmp_path, tiny_bert, snli_sample, no_evaluation):
    project = tmp_path / "project"
    project.mkdir()
    (project / "train_notes.txt").write_text("mine")
    (project / "data").mkdir()
    (project / "data" / "rows.jsonl").write_text("{}\n")
    run = train("--data", snli_sample, "--model", tiny_bert, "--max-steps", 2, "--output", ".", env=no_evaluation,
                cwd=project)
    assert run.returncode == 0, run.stderr
    assert (project / "train_notes.txt").read_text() == "mine" and (project / "data" / "rows.jsonl").exists()
    assert (project / "model.safetensors").exists() and (project / "checkpoints" / "step-00000002").exists()


def test_a_reused_output_is_refused_unless_resumed_or_overwritten(tmp_path, tiny_bert, snli_sample, no_evaluation):
    options = ["--data", snli_sample, "--model", tiny_bert, "--max-steps", 3, "--output", tmp_path / "out"]
    assert train(*options, env=no_evaluation).returncode == 0
    before = (tmp_path / "out" / "metrics.jsonl").read_text()
    again = train(*options, env=no_evaluation)
    assert again.returncode == 1 and "already holds a training run" in again.stderr and "--resume" in again.stderr
    assert (tmp_path / "out" / "metrics.jsonl").read_text() == before
    assert train(*options, "--overwrite", "--max-steps", 2, env=no_evaluation).returncode == 0
    assert sorted(p.name for p in (tmp_path / "out" / "checkpoints").iterdir()) == ["step-00000002"]


def test_resume_with_other_run_arguments_names_the_difference(tmp_path, tiny_bert, snli_sample, no_evaluation):
    options = ["--data", snli_sample, "--model", tiny_bert, "--max-steps", 2, "--output", tmp_path / "out"]
    assert train(*options, env=no_evaluation).returncode == 0
    other = train(*options, "--resume", "--concat", "u,v", "--lr", "1e-4", env=no_evaluation)
    assert other.returncode == 1 and "Traceback" not in other.stderr
    assert "--concat ['u', 'v', '|u-v|'] there, ['u', 'v'] now" in other.stderr and "--lr 2e-05 there" in other.stderr


def test_a_second_run_on_the_same_output_is_refused_while_the_first_runs(tmp_path, tiny_bert, snli_sample,
                                                                        no_evaluation):
    options = ["--data", snli_sample, "--model", tiny_bert, "--output", tmp_path / "out", "--log-steps", 1]
    first = train(*options, "--max-steps", 5000, env=no_evaluation, wait=False)
    try:
        wait_for_records(tmp_path / "out", first, 1)
        second = train(*options, "--max-steps", 2, "--resume", env=no_evaluation)
        assert second.returncode == 1 and f"(pid {first.pid}) is writing to" in second.stderr
    finally:
        first.kill()
        first.wait()


def test_ctrl_c_checkpoints_and_the_resumed_run_ends_where_an_uninterrupted_one_does(tmp_path, tiny_bert, snli_sample,
                                                                                    no_evaluation):
    options = ["--data", snli_sample, "--model", tiny_bert, "--max-steps", 150, "--log-steps", 1, "--eval-steps", 0]
    whole = train(*options, "--output", tmp_path / "whole", env=no_evaluation)
    assert whole.returncode == 0, whole.stderr
    interrupted = train(*options, "--output", tmp_path / "cut", env=no_evaluation, wait=False)
    wait_for_records(tmp_path / "cut", interrupted, 20)
    interrupted.send_signal(signal.SIGINT)
    _, stderr = interrupted.communicate(timeout=120)
    assert interrupted.returncode == 128 + signal.SIGINT, stderr
    assert "To continue:" in stderr.decode() and "--resume" in stderr.decode().split("To continue:")[1]
    with open(tmp_path / "cut" / "metrics.jsonl", "a") as f:
        f.write('{"step": 9999, "lo')  # a record torn by a kill
    resumed = train(*options, "--output", tmp_path / "cut", "--resume", env=no_evaluation)
    assert resumed.returncode == 0, resumed.stderr
    expected, got = weights(tmp_path / "whole"), weights(tmp_path / "cut")
    for name in expected:
        assert torch.allclose(expected[name], got[name], atol=1e-6, rtol=0), name
    assert [r["loss"] for r in metrics(tmp_path / "cut")] == pytest.approx([r["loss"] for r in metrics(tmp_path / "whole")],
                                                                            abs=1e-6)


@pytest.mark.parametrize("flags,message", [(["--max-steps", 0], "--max-steps must be at least 1, not 0"),
                                           (["--max-steps", -5], "--max-steps must be at least 1, not -5"),
                                           (["--lr", 0], "--lr must be above 0"),
                                           (["--lr=-1e-5"], "--lr must be above 0"),
                                           (["--checkpoint-steps", 0], "--checkpoint-steps must be at least 1")])
def test_step_flags_that_make_no_sense_are_refused_before_anything_is_written(tmp_path, flags, message):
    run = train("--data", "stsb", *flags, "--output", tmp_path / "out")
    assert run.returncode == 2 and message in run.stderr
    assert not (tmp_path / "out").exists()


def test_every_flag_has_help_with_its_default():
    text = train("--help").stdout
    flags = re.split(r"\n  (?=-)", text.split("options:")[1])[1:]
    assert len(flags) > 15
    for block in flags:
        assert block.startswith("-h") or "(default: " in " ".join(block.split()), block


def test_triplet_training_takes_the_papers_margin(tiny_bert, monkeypatch):
    # the class's default is sentence-transformers' (5); the paper trains with a margin of 1
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1]))
    import train
    args = train.parse_args(["--data", "snli", "--model", str(tiny_bert), "--loss", "triplet", "--output", "unused"])
    _, loss_fn, _, _ = train.build_training(args, "triplet", None, torch.device("cpu"))
    assert loss_fn.triplet_margin == 1.0
