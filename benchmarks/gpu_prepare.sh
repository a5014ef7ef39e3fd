#!/usr/bin/env bash
# Fill .gpu/ (ignored by git) with what the GPU check needs and the GPU machine lacks: the STS benchmark's distinct
# sentences, NLI training pairs in AllNLI's mix, all-MiniLM-L6-v2's tokenizer.json (about 2 MB), and wheels of
# datasets and the two packages it needs that the GPU machine's image lacks (dill, multiprocess; about 1 MB),
# without which sentence-transformers' fit() cannot run there. The device run carries it: carry [".gpu"]. Needs
# ../shared/data (or $MINISBERT_DATA), the default-model extra, and a package index for the wheels (the check runs
# without them, timing sentence-transformers' model and loss in a plain loop only).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .gpu
python - <<'PY'
import json, os, random
from pathlib import Path
from minisbert.checkpoint import default_model_folder
from minisbert.data import distinct_sentences, read_nli, read_sts_benchmark
data = Path(os.environ.get("MINISBERT_DATA", "../shared/data"))
sentences = distinct_sentences([e for split in ("train", "dev", "test")
                                for e in read_sts_benchmark(data / "stsbenchmark" / f"sts-{split}.csv")])
Path(".gpu/sentences.txt").write_text("\n".join(s.replace("\n", " ") for s in sentences), encoding="utf-8")
# AllNLI's mix, as train.py --data allnli sees it: SNLI train (549,367 pairs) and MultiNLI train (392,702), whose
# sentences are longer; here a sample of SNLI's train split and MultiNLI's dev set (its train set is not in ../shared)
snli = read_nli(data / "nli" / "snli_1.0_train.sample20k.jsonl")[:2333]
mnli = read_nli(data / "nli" / "multinli_1.0_dev_matched.jsonl")[:1667]
pairs = snli + mnli
random.Random(0).shuffle(pairs)
Path(".gpu/pairs.jsonl").write_text("".join(json.dumps({"sentence1": e.texts[0], "sentence2": e.texts[1],
                                                        "label": e.label}) + "\n" for e in pairs))
Path(".gpu/tokenizer.json").write_bytes((default_model_folder() / "tokenizer.json").read_bytes())
print(f"{len(sentences)} sentences, {len(pairs)} pairs ({len(snli)} SNLI, {len(mnli)} MultiNLI), "
      "tokenizer.json in .gpu/")
PY
# the GPU machine's Python is 3.12; pure-Python wheels of the versions installed here
python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .gpu/wheels \
    "datasets==$(python -c 'import datasets; print(datasets.__version__)')" \
    "dill==$(python -c 'import dill; print(dill.__version__)')" \
    "multiprocess==$(python -c 'import multiprocess; print(multiprocess.__version__)')" \
    || echo "no wheels of datasets: the GPU check will time sentence-transformers without fit()" >&2
du -sh .gpu
