"""Data readers on the official formats, their errors (file and line), the download, and the batch order."""

import json

import pytest
from conftest import snli_mirror

from minisbert import data
from minisbert.data import DataError


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_sts_benchmark_reads_7_and_9_fields_and_keeps_quotes(tmp_path):
    path = write(tmp_path / "sts-train.csv",
                 'main-captions\tMSRvid\t2012test\t0001\t5.000\tA "plane" is taking off.\tAn air plane is taking off.\n'
                 "main-news\theadlines\t2013\t0002\t1.5\tOne\tTwo\tsource a\tsource b\n")
    examples = data.read_sts_benchmark(path)
    assert [e.texts for e in examples] == [('A "plane" is taking off.', "An air plane is taking off."), ("One", "Two")]
    assert [e.label for e in examples] == [5.0, 1.5]


@pytest.mark.parametrize("line,message", [("a\tb\tc\td\t1.0\tone\ttwo\textra", r"sts-dev.csv:2: expected 7 or 9"),
                                          ("a\tb\tc\td\tfive\tone\ttwo", r"sts-dev.csv:2: the score 'five'"),
                                          ("a\tb\tc", r"sts-dev.csv:2: expected 7 to 9 tab-separated fields, found 3")])
def test_sts_benchmark_malformed_row_names_file_and_line(tmp_path, line, message):
    path = write(tmp_path / "sts-dev.csv", "g\tf\t2012\t1\t2.0\tone\ttwo\n" + line + "\n")
    with pytest.raises(DataError, match=message):
        data.read_sts_benchmark(path)


def test_the_real_files_have_their_documented_sizes(data_dir):
    assert [len(data.read_sts_benchmark(data_dir / "stsbenchmark" / f"sts-{s}.csv")) for s in ("train", "dev", "test")] \
        == [5749, 1500, 1379]
    assert len(data.read_sick(data_dir / "sick" / "SICK_test_annotated.txt")) == 4927
    # SOURCES.md: test labels NEUTRAL 2793, ENTAILMENT 1414, CONTRADICTION 720
    entailment = data.read_sick(data_dir / "sick" / "SICK_test_annotated.txt", task="entailment")
    assert [sum(e.label == data.NLI_LABELS[name] for e in entailment) for name in ("neutral", "entailment", "contradiction")] \
        == [2793, 1414, 720]
    stsb, kind = data.read_training_data("stsb", data_dir)
    assert kind == "sts" and min(e.label for e in stsb) == 0 and max(e.label for e in stsb) == 1
    assert len(data.read_nli(data_dir / "nli" / "snli_1.0_train.sample20k.jsonl")) == 20000
    # SOURCES.md: scored pairs per year, unscored (empty gold lines) skipped
    assert [sum(map(len, data.read_sts_year(data_dir / "sts12-16" / f"STS{y}").values())) for y in range(12, 17)] \
        == [3108, 1500, 3750, 3000, 1186]


def test_nli_jsonl_and_txt_skip_unlabelled_pairs(tmp_path):
    rows = [{"gold_label": "entailment", "sentence1": "A man.", "sentence2": "A person."},
            {"gold_label": "-", "sentence1": "A man.", "sentence2": "Unsure."},
            {"gold_label": "contradiction", "sentence1": "A man.", "sentence2": "A woman."}]
    jsonl = write(tmp_path / "snli_1.0_train.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    header = "gold_label\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\tsentence2_parse\t" \
             "sentence1\tsentence2\tcaptionID\tpairID\n"
    txt = write(tmp_path / "snli_1.0_train.txt", header + "".join(
        f"{r['gold_label']}\t(x)\t(y)\t(X)\t(Y)\t{r['sentence1']}\t{r['sentence2']}\tc\tp\n" for r in rows))
    for path in (jsonl, txt):
        examples = data.read_nli(path)
        assert [(e.texts, e.label) for e in examples] == [(("A man.", "A person."), 1), (("A man.", "A woman."), 0)]
    assert [e.texts for e in data.nli_triplets(data.read_nli(jsonl))] == [("A man.", "A person.", "A woman.")]


@pytest.mark.parametrize("line,message", [("{not json", r"train.jsonl:2: not valid JSON"),
                                          ('{"gold_label": "maybe", "sentence1": "a", "sentence2": "b"}',
                                           r"train.jsonl:2: unknown gold_label 'maybe'"),
                                          ('{"gold_label": "neutral", "sentence1": "a"}', r"train.jsonl:2: no 'sentence2'")])
def test_nli_malformed_row_names_file_and_line(tmp_path, line, message):
    good = json.dumps({"gold_label": "neutral", "sentence1": "a", "sentence2": "b"})
    with pytest.raises(DataError, match=message):
        data.read_nli(write(tmp_path / "train.jsonl", good + "\n" + line + "\n"))


def test_sts_year_skips_unscored_pairs_and_checks_alignment(tmp_path):
    write(tmp_path / "STS.input.news.txt", "a\tb\nc\td\ne\tf\n")
    write(tmp_path / "STS.gs.news.txt", "4.0\n\n1.2\n")
    assert [(e.texts, e.label) for e in data.read_sts_year(tmp_path)["news"]] == [(("a", "b"), 4.0), (("e", "f"), 1.2)]
    write(tmp_path / "STS.gs.news.txt", "4.0\n1.0\n")
    with pytest.raises(DataError, match=r"STS.gs.news.txt: 2 lines, but STS.input.news.txt has 3"):
        data.read_sts_year(tmp_path)


def test_missing_data_says_which_files_and_where_to_get_them(tmp_path):
    with pytest.raises(DataError) as error:
        data.read_training_data("mnli", tmp_path)
    message = str(error.value)
    assert str(tmp_path / "multinli_1.0" / "multinli_1.0_train.jsonl") in message
    assert "https://cims.nyu.edu/~sbowman/multinli/multinli_1.0.zip" in message and "--download" in message


def test_download_fetches_and_unpacks_the_official_archive_layout(tmp_path, monkeypatch):
    row = json.dumps({"gold_label": "neutral", "sentence1": "A dog runs.", "sentence2": "A dog plays."}) + "\n"
    with snli_mirror(tmp_path / "mirror", row) as (url, requested):
        monkeypatch.setenv("MINISBERT_DATA_MIRROR", url)
        data.download("snli", tmp_path / "data")
    assert requested == ["/snli_1.0.zip"]
    examples, kind = data.read_training_data("snli", tmp_path / "data")
    assert kind == "nli" and [e.texts for e in examples] == [("A dog runs.", "A dog plays.")]
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["snli_1.0"]  # nothing left behind


def test_batch_order_depends_only_on_seed_and_epoch_and_shards_partition_a_batch():
    first = data.batch_order(103, 16, seed=7, epoch=2)
    assert first == data.batch_order(103, 16, seed=7, epoch=2) != data.batch_order(103, 16, seed=7, epoch=3)
    assert sorted(i for batch in first for i in batch) == list(range(103)) and len(first[-1]) == 103 % 16
    batch = list(range(11))
    assert [data.shard(batch, r, 3) for r in range(3)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10]]


def test_the_shared_layout_with_an_nli_folder_is_found(data_dir):
    assert data.find_file("snli", data_dir).relative_to(data_dir).parts[0] == "nli"


def test_online_a_missing_data_set_downloads_into_the_cache_without_touching_other_files(tmp_path, monkeypatch):
    row = json.dumps({"gold_label": "entailment", "sentence1": "A dog runs.", "sentence2": "An animal moves."}) + "\n"
    cache_data = tmp_path / "cache" / "data"  # MINISBERT_CACHE is tmp_path / "cache" in every test
    (cache_data / "snli_1.0").mkdir(parents=True)
    write(cache_data / "snli_1.0" / "README.txt", "a user's own notes")
    with snli_mirror(tmp_path / "mirror", row) as (url, requested):
        monkeypatch.setenv("MINISBERT_DATA_MIRROR", url)
        with pytest.raises(DataError, match="no snli training data"):  # HF_HUB_OFFLINE=1: nothing is fetched
            data.ensure_downloaded("snli", tmp_path / "empty")
        assert requested == []
        monkeypatch.setenv("HF_HUB_OFFLINE", "0")
        data.ensure_downloaded("snli", tmp_path / "empty")
    assert (cache_data / "snli_1.0" / "README.txt").read_text() == "a user's own notes"
    examples, _ = data.read_training_data("snli", tmp_path / "empty")
    assert [e.texts for e in examples] == [("A dog runs.", "An animal moves.")]
    assert not (tmp_path / "empty").exists()


def test_a_failed_download_is_one_clear_error_and_leaves_no_folders(tmp_path, monkeypatch):
    monkeypatch.setenv("MINISBERT_DATA_MIRROR", "http://127.0.0.1:9")  # the discard port: nothing listens
    with pytest.raises(DataError, match=r"cannot download http://127\.0\.0\.1:9/snli_1\.0\.zip"):
        data.download("snli", tmp_path / "new" / "data")
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("name,text,message", [
    ("sts-train.csv", "g\tf\t2012\t1\t7.5\tone\ttwo\n", r"sts-train.csv:1: the score '7.5' is outside .* 0..5"),
    ("sts-train.csv", "g\tf\t2012\t1\tnan\tone\ttwo\n", r"the score 'nan' is outside"),
    ("SICK.txt", "pair_ID\tsentence_A\tsentence_B\trelatedness_score\n1\ta\tb\t0.5\n", r"SICK.txt:2: .* outside .* 1..5"),
    ("rows.jsonl", '["a", "b"]\n', r"rows.jsonl:1: expected a JSON object, found list"),
])
def test_bad_training_rows_name_file_and_line(tmp_path, name, text, message):
    with pytest.raises(DataError, match=message):
        data.read_training_data(str(write(tmp_path / name, text)), tmp_path)


def jsonl(*rows) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


@pytest.mark.parametrize("rows,kind,texts,labels", [
    ([{"sentence1": "a", "sentence2": "b", "score": 0.8}, {"sentence2": "d", "sentence1": "c", "score": -1}], "sts",
     [("a", "b"), ("c", "d")], [0.8, -1]),
    ([{"premise": "a", "hypothesis": "b", "label": 2}, {"premise": "c", "hypothesis": "d", "label": 0}], "classes",
     [("a", "b"), ("c", "d")], [2, 0]),
    ([{"anchor": "a", "positive": "b"}], "pairs", [("a", "b")], [0]),
    ([{"anchor": "a", "positive": "b", "negative": "c", "negative_2": "d"}], "pairs", [("a", "b", "c", "d")], [0]),
])
def test_sentence_transformers_dataset_columns_in_json_lines(tmp_path, rows, kind, texts, labels):
    # the texts in the first line's column order (a later line may order its keys otherwise), the label by its name
    examples, found = data.read_training_data(str(write(tmp_path / "train.jsonl", jsonl(*rows) + "\n")), tmp_path)
    assert found == kind and [e.texts for e in examples] == texts and [e.label for e in examples] == labels


@pytest.mark.parametrize("text,message", [
    (jsonl({"anchor": "a"}), r"train.jsonl:1: expected two text columns and a score or label column, or two or more"),
    (jsonl({"a": "x", "b": "y", "c": "z", "score": 1.0}), r"train.jsonl:1: expected two text columns"),
    (jsonl({"a": "x", "b": "y", "score": 1.0, "label": 1}), r"train.jsonl:1: expected two text columns"),
    (jsonl({"a": "x", "b": "y"}, {"a": "x", "c": "y"}), r"train.jsonl:2: the columns a, c are not the first line's"),
    (jsonl({"a": "x", "b": "y"}, {"a": "x", "b": None}), r"train.jsonl:2: b must be a string, not None"),
    (jsonl({"a": "x", "b": "y", "score": 4.2}), r"train.jsonl:1: the score 4.2 is not a similarity in \[-1, 1\]"),
    (jsonl({"a": "x", "b": "y", "score": "0.5"}), r"train.jsonl:1: the score '0.5' is not a similarity"),
    (jsonl({"a": "x", "b": "y", "label": 1.0}), r"train.jsonl:1: the label 1.0 is not a class id"),
    (jsonl({"a": "x", "b": "y", "label": True}), r"train.jsonl:1: the label True is not a class id"),
    ("\n\n", r"train.jsonl: the file is empty"),
    ('{"a": "x", "b": "y"}\n{"a": \n', r"train.jsonl:2: not valid JSON"),
])
def test_bad_dataset_columns_name_file_and_line(tmp_path, text, message):
    with pytest.raises(DataError, match=message):
        data.read_training_data(str(write(tmp_path / "train.jsonl", text)), tmp_path)


def test_a_folder_or_a_binary_file_as_data_is_named(tmp_path):
    with pytest.raises(DataError, match="a folder"):
        data.read_training_data(str(tmp_path), tmp_path)
    (tmp_path / "weights.bin").write_bytes(bytes(range(256)) * 4)
    with pytest.raises(DataError, match=r"weights\.bin: not UTF-8 text"):
        data.read_training_data(str(tmp_path / "weights.bin"), tmp_path)
