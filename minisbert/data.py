"""The data sets of the paper, read from their official files, and the order in which training sees them.

NLI (SNLI, MultiNLI): JSON lines or the tab-separated .txt with a header; pairs without a gold label ("-") are
skipped. STS benchmark: tab-separated, no quoting, 7 or 9 fields. SICK: tab-separated with a header. STS12-16:
STS.input.<subset>.txt beside STS.gs.<subset>.txt, pairs with an empty gold line skipped. And JSON lines laid out as
a sentence-transformers training dataset (read_columns). A malformed row is an error that names the file and the line.
"""

import csv
import json
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .hub import cache_dir, offline

NLI_LABELS = {"contradiction": 0, "entailment": 1, "neutral": 2}  # sentence-transformers' training_nli numbering

# Where each named data set lives under --data-dir: the official archive's layout first, then the file alone, then
# the data set's own folder or an `nli/` folder of JSONL files. The glob patterns accept a sample of the training
# file (such as snli_1.0_train.sample20k.jsonl).
TRAIN_FILES = {
    "snli": ["snli_1.0/snli_1.0_train.jsonl", "snli_1.0_train.jsonl", "snli_1.0/snli_1.0_train.txt",
             "snli_1.0_train.txt", "snli_1.0_train*.jsonl", "snli/snli_1.0_train*.jsonl", "nli/snli_1.0_train*.jsonl"],
    "mnli": ["multinli_1.0/multinli_1.0_train.jsonl", "multinli_1.0_train.jsonl",
             "multinli_1.0/multinli_1.0_train.txt", "multinli_1.0_train.txt", "multinli_1.0_train*.jsonl",
             "mnli/multinli_1.0_train*.jsonl", "multinli/multinli_1.0_train*.jsonl", "nli/multinli_1.0_train*.jsonl"],
}
SCORE_RANGES = {"sts": (0, 5), "sick": (1, 5)}  # the gold similarity scales of STS (STSb, STS12-16) and SICK
STS_BENCHMARK_FILES = ("stsbenchmark/sts-{split}.csv", "sts-{split}.csv")  # the archive's layout, or the file alone
TRAIN_FILES["stsb"] = [pattern.format(split="train") for pattern in STS_BENCHMARK_FILES]
OFFICIAL_ARCHIVES = {
    "snli": "https://nlp.stanford.edu/projects/snli/snli_1.0.zip",
    "mnli": "https://cims.nyu.edu/~sbowman/multinli/multinli_1.0.zip",
    "stsb": "http://ixa2.si.ehu.eus/stswiki/images/4/48/Stsbenchmark.tar.gz",
}


class DataError(ValueError):
    pass


# sentence-transformers' label columns, and the kind of data each makes (read_columns)
LABEL_COLUMNS = {"score": "sts", "label": "classes"}


@dataclass
class Example:
    texts: tuple[str, ...]  # (sentence1, sentence2), or (anchor, positive, negative[, more negatives])
    label: float | int = 0  # an NLI class, a class of another kind, or a gold similarity


class InputExample(Example):
    """An Example under sentence-transformers' name and arguments, for code moved from it: `guid` first (kept, not
    used), then the texts and the label."""

    def __init__(self, guid: str = "", texts: list[str] | None = None, label: float | int = 0):
        super().__init__(texts, label)
        self.guid = guid

    def __str__(self) -> str:
        return f"<InputExample> label: {self.label}, texts: {'; '.join(self.texts)}"


def default_data_dir() -> Path:
    return Path(os.environ.get("MINISBERT_DATA", "data"))


def _rows(path: Path, min_fields: int, max_fields: int | None = None, header: bool = False):
    """(line number, fields) of a tab-separated file, read without quoting (sentences hold quote marks)."""
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        for row in reader:
            if not any(field.strip() for field in row):
                continue
            if not min_fields <= len(row) <= (max_fields or len(row)):
                expected = min_fields if max_fields == min_fields else f"{min_fields} to {max_fields or 'any'}"
                raise DataError(f"{path}:{reader.line_num}: expected {expected} tab-separated fields, found {len(row)}")
            yield reader.line_num, [field.rstrip("\r") for field in row]


def _columns(path: Path, rows, wanted: dict[str, tuple[str, ...]]) -> tuple:
    """The header's position of each wanted column (given by its accepted names), or an error naming the file."""
    try:
        _, header = next(rows)
    except StopIteration:
        raise DataError(f"{path}: the file is empty") from None
    positions = {}
    for column, names in wanted.items():
        found = [header.index(name) for name in names if name in header]
        if not found:
            raise DataError(f"{path}:1: the header has no {' or '.join(names)} column (it has {', '.join(header)})")
        positions[column] = found[0]
    return positions


def _check_width(row: list[str], at: dict, path: Path, line: int) -> None:
    if len(row) <= max(at.values()):
        raise DataError(f"{path}:{line}: expected at least {max(at.values()) + 1} tab-separated fields, found {len(row)}")


def _score(text: str, path: Path, line: int, scale: str = "sts") -> float:
    low, high = SCORE_RANGES[scale]
    try:
        score = float(text)
    except ValueError:
        raise DataError(f"{path}:{line}: the score {text!r} is not a number") from None
    if not low <= score <= high:  # also NaN
        raise DataError(f"{path}:{line}: the score {text!r} is outside the data set's range {low}..{high}")
    return score


def read_nli(path: Path) -> list[Example]:
    """(premise, hypothesis) with label 0/1/2 (contradiction/entailment/neutral); '-' labels are skipped."""
    path = Path(path)
    examples = []

    def add(label, premise, hypothesis, line):
        if label == "-":
            return
        if label not in NLI_LABELS:
            raise DataError(f"{path}:{line}: unknown gold_label {label!r} (expected {', '.join(NLI_LABELS)} or -)")
        if not isinstance(premise, str) or not isinstance(hypothesis, str):
            raise DataError(f"{path}:{line}: sentence1 and sentence2 must be strings")
        examples.append(Example((premise, hypothesis), NLI_LABELS[label]))

    if path.suffix == ".jsonl":
        for line_number, row in _json_objects(path):
            try:
                add(row["gold_label"], row["sentence1"], row["sentence2"], line_number)
            except KeyError as error:
                raise DataError(f"{path}:{line_number}: no {error.args[0]!r} key") from None
    else:
        rows = _rows(path, 1)
        at = _columns(path, rows, {"label": ("gold_label",), "s1": ("sentence1",), "s2": ("sentence2",)})
        for line_number, row in rows:
            _check_width(row, at, path, line_number)
            add(row[at["label"]], row[at["s1"]], row[at["s2"]], line_number)
    return examples


def read_columns(path: Path) -> tuple[list[Example], str]:
    """A JSON lines file laid out as a sentence-transformers training dataset: every line an object with the first
    line's keys; the text columns, in that order, are an example's texts, and a label column, if any, its label.
    -> (examples, kind): with "score", a gold similarity in [-1, 1] for the cosine objective, 'sts'; with "label", a
    class id (0, 1, ...) for the softmax objective, 'classes'; both with two texts. With neither, 'pairs': an anchor
    and its positive, then any negatives, for in-batch negatives (or, with one negative, the triplet objective)."""
    path = Path(path)
    examples, columns = [], None
    for line_number, row in _json_objects(path):
        if columns is None:
            columns = list(row)
            labels = [name for name in columns if name in LABEL_COLUMNS]
            texts = [name for name in columns if name not in LABEL_COLUMNS]
            if len(labels) > 1 or len(texts) < 2 or (labels and len(texts) != 2):
                raise DataError(f"{path}:{line_number}: expected two text columns and a score or label column, "
                                f"or two or more text columns (anchor, positive, negatives); found "
                                f"{', '.join(columns) or 'none'}")
            label = labels[0] if labels else None
        if set(row) != set(columns):
            raise DataError(f"{path}:{line_number}: the columns {', '.join(row)} are not the first line's "
                            f"({', '.join(columns)})")
        for name in texts:
            if not isinstance(row[name], str):
                raise DataError(f"{path}:{line_number}: {name} must be a string, not {row[name]!r}")
        value = row.get(label, 0)
        if label == "score" and not (type(value) in (int, float) and -1 <= value <= 1):
            raise DataError(f"{path}:{line_number}: the score {value!r} is not a similarity in [-1, 1] (scale "
                            "gold scores to it, as sentence-transformers' cosine objective expects)")
        if label == "label" and not (type(value) is int and value >= 0):
            raise DataError(f"{path}:{line_number}: the label {value!r} is not a class id (0, 1, ...); a gold "
                            "similarity goes in a score column")
        examples.append(Example(tuple(row[name] for name in texts), value))
    if columns is None:
        raise DataError(f"{path}: the file is empty")
    return examples, LABEL_COLUMNS.get(label, "pairs")


def _json_objects(path: Path):
    """(line number, object) for each non-blank line of a JSON lines file; a line that is not a JSON object is a
    DataError naming it."""
    with open(path, encoding="utf-8") as f:
        for line_number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{path}:{line_number}: not valid JSON ({error.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{line_number}: expected a JSON object, found {type(row).__name__}")
            yield line_number, row


def nli_triplets(examples: list[Example]) -> list[Example]:
    """(premise, entailed hypothesis, contradicted hypothesis) for every premise that has both."""
    by_premise: dict[str, dict[int, list[str]]] = {}
    for example in examples:
        premise, hypothesis = example.texts
        by_premise.setdefault(premise, {}).setdefault(example.label, []).append(hypothesis)
    triplets = []
    for premise, hypotheses in by_premise.items():
        entailed = hypotheses.get(NLI_LABELS["entailment"], [])
        contradicted = hypotheses.get(NLI_LABELS["contradiction"], [])
        for i, positive in enumerate(entailed if contradicted else []):
            triplets.append(Example((premise, positive, contradicted[i % len(contradicted)])))
    return triplets


def read_sts_benchmark(path: Path) -> list[Example]:
    """sts-{train,dev,test}.csv: genre, file, year, id, score (0-5), sentence1, sentence2 [, source1, source2]."""
    path = Path(path)
    examples = []
    for line, row in _rows(path, 7, 9):
        if len(row) == 8:
            raise DataError(f"{path}:{line}: expected 7 or 9 tab-separated fields, found 8")
        examples.append(Example((row[5], row[6]), _score(row[4], path, line)))
    return examples


def distinct_sentences(examples: list[Example]) -> list[str]:
    """Every sentence of `examples` once, in order of first appearance."""
    return list(dict.fromkeys(text for example in examples for text in example.texts))


def read_sick(path: Path, task: str = "relatedness") -> list[Example]:
    """SICK (SemEval-2014 files or the full SICK.txt): the relatedness score (1-5), or with task="entailment"
    the entailment judgment as an NLI label (SICK-E)."""
    path = Path(path)
    rows = _rows(path, 1)
    target = ("relatedness_score",) if task == "relatedness" else ("entailment_judgment", "entailment_label")
    at = _columns(path, rows, {"s1": ("sentence_A",), "s2": ("sentence_B",), "target": target})
    examples = []
    for line, row in rows:
        _check_width(row, at, path, line)
        if task == "relatedness":
            label = _score(row[at["target"]], path, line, "sick")
        elif row[at["target"]].lower() in NLI_LABELS:
            label = NLI_LABELS[row[at["target"]].lower()]
        else:
            raise DataError(f"{path}:{line}: unknown entailment judgment {row[at['target']]!r}")
        examples.append(Example((row[at["s1"]], row[at["s2"]]), label))
    return examples


def read_sts_year(folder: Path) -> dict[str, list[Example]]:
    """One STS12-16 folder: {subset: pairs with a gold score}; gold lines left empty are unscored pairs."""
    folder = Path(folder)
    subsets = {}
    for input_path in sorted(folder.glob("*.input.*.txt")):
        subset = input_path.name.split(".input.")[1][: -len(".txt")]
        gold_path = input_path.with_name(input_path.name.replace(".input.", ".gs."))
        if not gold_path.exists():
            continue  # STS13's SMT subset ships no text; likewise any input without gold scores
        inputs = input_path.read_text(encoding="utf-8").split("\n")
        golds = gold_path.read_text(encoding="utf-8").split("\n")
        if inputs[-1] == "":
            inputs.pop()
        if golds[-1] == "":
            golds.pop()
        if len(inputs) != len(golds):
            raise DataError(f"{gold_path}: {len(golds)} lines, but {input_path.name} has {len(inputs)}")
        examples = []
        for line, (text, gold) in enumerate(zip(inputs, golds), 1):
            if not gold.strip():
                continue
            fields = text.rstrip("\r").split("\t")
            if len(fields) < 2:
                raise DataError(f"{input_path}:{line}: expected two tab-separated sentences, found {len(fields)} field")
            examples.append(Example((fields[0], fields[1]), _score(gold, gold_path, line)))
        subsets[subset] = examples
    if not subsets:
        raise DataError(f"{folder}: no STS.input.*.txt with its STS.gs.*.txt")
    return subsets


def data_cache() -> Path:
    """Where data sets downloaded on first use are kept."""
    return cache_dir() / "data"


def find_file(name: str, data_dir: Path) -> Path:
    """The training file of a named data set under `data_dir` or in the download cache; if none, an error that
    lists where it looked and how to get it."""
    for folder in (Path(data_dir), data_cache()):
        for pattern in TRAIN_FILES[name]:
            matches = sorted(folder.glob(pattern))
            if matches:
                return matches[0]
    looked = "\n  ".join(str(Path(data_dir) / pattern) for pattern in TRAIN_FILES[name])
    raise DataError(f"no {name} training data; looked for:\n  {looked}\n  and in {data_cache()}\n"
                    f"Point --data-dir (or MINISBERT_DATA) at the folder that holds it, or download "
                    f"{OFFICIAL_ARCHIVES[name]} and unpack it there (--download does that into --data-dir; "
                    "without HF_HUB_OFFLINE, train.py downloads it into the cache by itself).")


def ensure_downloaded(name: str, data_dir: Path, into_data_dir: bool = False) -> None:
    """Download a named data set if it is neither under `data_dir` nor cached: into `data_dir` when asked,
    else into the cache, unless HF_HUB_OFFLINE is set (then the error says where to get it)."""
    try:
        find_file(name, data_dir)
        return
    except DataError:
        if offline() and not into_data_dir:
            raise
    download(name, data_dir if into_data_dir else data_cache())


def _to_unit(examples: list[Example], low: float, high: float) -> list[Example]:
    return [Example(e.texts, (e.label - low) / (high - low)) for e in examples]


def find_sts_benchmark(split: str, *data_dirs: Path) -> Path | None:
    """sts-<split>.csv in the first of `data_dirs` that has it, or None."""
    candidates = (Path(d) / pattern.format(split=split) for d in data_dirs for pattern in STS_BENCHMARK_FILES)
    return next((path for path in candidates if path.exists()), None)


def read_training_data(data: str, data_dir: Path) -> tuple[list[Example], str]:
    """--data (snli, mnli, allnli, stsb, or a file) -> (examples, kind), kind being 'nli' (labels 0/1/2), 'sts'
    (gold similarity scaled to [0, 1], the target of the cosine objective: STSb 0..5, SICK 1..5; or as a JSON lines
    file's score column gives it), or a JSON lines file's 'classes' or 'pairs' (read_columns)."""
    if data in ("snli", "mnli"):
        return read_nli(find_file(data, data_dir)), "nli"
    if data == "allnli":
        return read_nli(find_file("snli", data_dir)) + read_nli(find_file("mnli", data_dir)), "nli"
    if data == "stsb":
        return _to_unit(read_sts_benchmark(find_file("stsb", data_dir)), 0, 5), "sts"
    path = Path(data)
    if not path.exists():
        raise DataError(f"--data {data!r} is neither snli, mnli, allnli, stsb nor an existing file")
    if path.is_dir():
        raise DataError(f"--data {data}: a folder; name a data set (snli, mnli, allnli, stsb) or a file")
    try:
        return _read_file(path)
    except UnicodeDecodeError as error:
        raise DataError(f"--data {data}: not UTF-8 text ({error.reason} at byte {error.start} of a block); "
                        "expected NLI JSONL or TSV, STS benchmark CSV, SICK, or JSONL of sentence-transformers "
                        "dataset columns") from None


def _read_file(path: Path) -> tuple[list[Example], str]:
    if path.suffix == ".csv":
        return _to_unit(read_sts_benchmark(path), 0, 5), "sts"
    with open(path, encoding="utf-8") as f:
        header = next((line for line in f if line.strip()), "")
    if path.suffix == ".jsonl" and '"gold_label"' not in header:
        return read_columns(path)
    if path.suffix == ".jsonl" or "gold_label" in header:
        return read_nli(path), "nli"
    return _to_unit(read_sick(path), 1, 5), "sts"


def download(name: str, data_dir: Path) -> None:
    """Fetch and unpack a data set's official archive into `data_dir` (MINISBERT_DATA_MIRROR replaces the host).

    The archive lands in a temporary folder first; its files then move into `data_dir`, never over a file that
    is there already. A failed download leaves nothing behind, not even the folders it made.
    """
    url = OFFICIAL_ARCHIVES[name]
    mirror = os.environ.get("MINISBERT_DATA_MIRROR")
    if mirror:
        url = mirror.rstrip("/") + "/" + url.rsplit("/", 1)[1]
    data_dir = Path(data_dir).absolute()
    made = next((folder for folder in reversed([data_dir, *data_dir.parents]) if not folder.exists()), None)
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(dir=data_dir, prefix=".download-") as staging:
            archive = Path(staging) / url.rsplit("/", 1)[1]
            _fetch(url, archive)
            unpacked = Path(staging) / "unpacked"
            if archive.suffix == ".zip":
                with zipfile.ZipFile(archive) as z:
                    for member in z.namelist():
                        if member.startswith("/") or ".." in Path(member).parts:
                            raise DataError(f"{url}: unsafe path {member!r} in the archive")
                    z.extractall(unpacked)
            else:
                with tarfile.open(archive) as t:
                    for member in t.getmembers():
                        if not (member.isfile() or member.isdir()) or member.name.startswith("/") or \
                                ".." in Path(member.name).parts:
                            raise DataError(f"{url}: unsafe entry {member.name!r} in the archive")
                    # the "data" filter (Python >= 3.10.12) also refuses links out and odd permissions
                    t.extractall(unpacked, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
            shutil.rmtree(unpacked / "__MACOSX", ignore_errors=True)
            _move_new_files(unpacked, data_dir)
    except BaseException:
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)
        raise


def _fetch(url: str, path: Path) -> None:
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(path, "wb") as f, \
                tqdm(total=int(response.headers.get("Content-Length") or 0) or None, unit="B", unit_scale=True,
                     desc=f"downloading {url.rsplit('/', 1)[1]}", disable=None) as bar:
            while chunk := response.read(1 << 20):
                f.write(chunk)
                bar.update(len(chunk))
            expected = response.headers.get("Content-Length")
        if expected is not None and path.stat().st_size != int(expected):
            raise DataError(f"cannot download {url}: the connection closed after {path.stat().st_size:,} of "
                            f"{int(expected):,} bytes; try again")
    except (urllib.error.URLError, OSError) as error:
        raise DataError(f"cannot download {url} ({getattr(error, 'reason', error)}); download it by hand and unpack it "
                        "under --data-dir (or MINISBERT_DATA)") from None


def _move_new_files(source: Path, target: Path) -> None:
    """Move the tree `source` into `target`, file by file, leaving every file that `target` already has."""
    for entry in source.iterdir():
        destination = target / entry.name
        if entry.is_dir() and destination.is_dir():
            _move_new_files(entry, destination)
        elif not destination.exists():
            entry.rename(destination)


def batch_order(n_examples: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The batches of one epoch: a shuffle that depends only on (seed, epoch), so a resumed run sees the same."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n_examples, generator=generator).tolist()
    return [order[start:start + batch_size] for start in range(0, n_examples, batch_size)]


def shard(batch: list[int], rank: int, world_size: int) -> list[int]:
    """This process's part of a global batch (contiguous, sizes differing by at most one)."""
    size, extra = divmod(len(batch), world_size)
    start = rank * size + min(rank, extra)
    return batch[start:start + size + (rank < extra)]

