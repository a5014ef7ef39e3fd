"""encode.py as a user runs it."""

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer as Reference
from sentence_transformers import util

ROOT = Path(__file__).resolve().parents[1]
SENTENCES1 = ["The cat sits outside", "A man is playing guitar", "The new movie is awesome"]
SENTENCES2 = ["The dog plays in the garden", "A woman watches TV", "The new movie is so great"]


def run(*args, stdin=None):
    result = subprocess.run([sys.executable, str(ROOT / "encode.py"), *args], input=stdin, capture_output=True,
                            text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_no_arguments_prints_the_example_pairs_with_reference_scores(minilm_folder):
    lines = run().strip().splitlines()
    reference = Reference(str(minilm_folder), device="cpu")
    expected = util.cos_sim(reference.encode(SENTENCES1), reference.encode(SENTENCES2)).diagonal()
    assert len(lines) == 3
    for line, s1, s2, score in zip(lines, SENTENCES1, SENTENCES2, expected):
        assert line.startswith(s1) and s2 in line
        assert abs(float(re.search(r"Score: (-?\d\.\d{4})$", line).group(1)) - float(score)) <= 1e-4


def test_input_file_to_npy_equals_reference(minilm_folder, tmp_path):
    texts = ["first line", "", "a third line with Ümlauts", "word " * 300]
    out = tmp_path / "embeddings.npy"
    message = run("--input", "-", "--output", str(out), "--normalize", stdin="\n".join(texts) + "\n")
    assert "wrote 4 embeddings of dimension 384" in message
    expected = Reference(str(minilm_folder), device="cpu").encode(texts, normalize_embeddings=True)
    np.testing.assert_allclose(np.load(out), expected, atol=1e-5, rtol=0)


def test_help_explains_every_option():
    text = run("--help")
    for option in ("--model", "--input", "--output", "--batch-size", "--normalize", "--device", "--precision",
                   "--prompt-name", "--prompt"):
        assert option in text


def test_missing_model_is_a_message_not_a_traceback(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "encode.py"), "--model", str(tmp_path / "none")],
                            capture_output=True, text=True, cwd=ROOT, env={"HF_HUB_OFFLINE": "1", "PATH": ""}, timeout=300)
    assert result.returncode == 1
    assert "not found" in result.stderr and "Traceback" not in result.stderr


CORPUS = ["A man is playing guitar.", "A man plays the guitar.", "A woman slices an onion.",
          "Someone is cutting an onion.", "The cat sleeps on the sofa.", "A kitten is asleep.", "It is raining."]


def test_search_prints_the_reference_hits(minilm_folder, tmp_path):
    (tmp_path / "corpus.txt").write_text("\n".join(CORPUS) + "\n", encoding="utf-8")
    queries = ["guitar music", "a sleeping cat"]
    output = run("--search", *queries, "--corpus", str(tmp_path / "corpus.txt"), "--top-k", "3")
    reference = Reference(str(minilm_folder), device="cpu")
    expected = util.semantic_search(reference.encode(queries), reference.encode(CORPUS), top_k=3)
    blocks = output.split("Query: ")[1:]
    assert [block.splitlines()[0] for block in blocks] == queries
    for block, hits in zip(blocks, expected):
        printed = [re.match(r"\s+(-?\d\.\d{4})\t\[(\d+)\] (.*)$", line).groups() for line in block.splitlines()[1:]]
        assert [(int(i), text) for _, i, text in printed] == [(hit["corpus_id"], CORPUS[hit["corpus_id"]]) for hit in hits]
        assert [float(score) for score, _, _ in printed] == pytest.approx([hit["score"] for hit in hits], abs=1e-4)


def test_search_embeds_queries_and_documents_with_the_models_prompts(minilm_folder, tmp_path):
    # as sentence-transformers' encode_query and encode_document; --prompt-name for the texts of --input
    Reference(str(minilm_folder), device="cpu", prompts={"query": "query: ", "document": "passage: "}).save(
        str(tmp_path / "prompted"))
    reference = Reference(str(tmp_path / "prompted"), device="cpu")
    (tmp_path / "corpus.txt").write_text("\n".join(CORPUS) + "\n", encoding="utf-8")
    queries = ["guitar music", "a sleeping cat"]
    output = run("--model", str(tmp_path / "prompted"), "--search", *queries, "--corpus", str(tmp_path / "corpus.txt"),
                 "--top-k", "2")
    expected = util.semantic_search(reference.encode_query(queries), reference.encode_document(CORPUS), top_k=2)
    unprompted = util.semantic_search(reference.encode(queries), reference.encode(CORPUS), top_k=2)
    printed = [float(score) for score in re.findall(r"^\s+(-?\d\.\d{4})\t", output, flags=re.MULTILINE)]
    assert printed == pytest.approx([hit["score"] for hits in expected for hit in hits], abs=1e-4)
    assert printed != pytest.approx([hit["score"] for hits in unprompted for hit in hits], abs=1e-3)
    out = tmp_path / "embeddings.npy"
    run("--model", str(tmp_path / "prompted"), "--input", "-", "--output", str(out), "--prompt-name", "document",
        stdin="\n".join(CORPUS) + "\n")
    np.testing.assert_allclose(np.load(out), reference.encode_document(CORPUS), atol=1e-5, rtol=0)


def test_mine_prints_the_reference_pairs(minilm_folder):
    output = run("--mine", "-", "--top-k", "4", stdin="\n".join(CORPUS) + "\n")
    reference = Reference(str(minilm_folder), device="cpu")
    expected = util.paraphrase_mining(reference, CORPUS, top_k=4, max_pairs=4)
    printed = [re.match(r"(-?\d\.\d{4})\t\[(\d+)\] .*\t\[(\d+)\] ", line).groups() for line in output.splitlines()]
    assert [(int(i), int(j)) for _, i, j in printed] == [(i, j) for _, i, j in expected]
    assert [float(score) for score, _, _ in printed] == pytest.approx([score for score, _, _ in expected], abs=1e-4)


def run_failing(*args, stdin=None, cwd=ROOT, script="encode.py"):
    result = subprocess.run([sys.executable, str(ROOT / script), *args], input=stdin, capture_output=True, cwd=cwd,
                            timeout=300)
    assert result.returncode != 0 and b"Traceback" not in result.stderr, result.stderr
    return result.stderr.decode()


def test_input_lines_end_at_newlines_only(minilm_folder, tmp_path):
    # characters that str.splitlines() would break at stay inside their line; \r\n ends a line; a BOM is dropped
    texts = ["page\x0cbreak", "group\x1dsep", "next\x85line", "line\u2028separator", "plain"]
    (tmp_path / "in.txt").write_bytes(b"\xef\xbb\xbf" + "\r\n".join(texts).encode("utf-8") + b"\r\n")
    message = run("--input", str(tmp_path / "in.txt"), "--output", str(tmp_path / "out"))
    assert f"wrote 5 embeddings of dimension 384 to {tmp_path / 'out'}" in message
    expected = Reference(str(minilm_folder), device="cpu").encode(texts)
    np.testing.assert_allclose(np.load(tmp_path / "out"), expected, atol=1e-5, rtol=0)  # the exact name given


def test_bad_input_and_output_paths_are_named_before_encoding(tmp_path):
    (tmp_path / "latin1.txt").write_bytes("fine\ncaf\xe9\n".encode("latin-1"))
    assert "not UTF-8 text (byte 8" in run_failing("--input", str(tmp_path / "latin1.txt"), "--output",
                                                   str(tmp_path / "x.npy"))
    assert "is a folder, not a text file" in run_failing("--input", str(tmp_path), "--output", str(tmp_path / "x.npy"))
    (tmp_path / "in.txt").write_text("a\n")
    message = run_failing("--input", str(tmp_path / "in.txt"), "--output", str(tmp_path / "missing" / "x.npy"))
    assert f"the folder {tmp_path / 'missing'} does not exist" in message


def test_evaluate_without_any_data_fails(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "evaluate.py"), "--data-dir", str(tmp_path)],
                            capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 1 and "none of the Table 1 sets" in result.stderr
