#!/usr/bin/env bash
# Fill .gpu/ (ignored by git) with what the GPU check needs and the GPU machine lacks: the STS benchmark's distinct
# sentences, SNLI training pairs, and all-MiniLM-L6-v2's tokenizer.json (about 2 MB). The device run carries it:
# carry [".gpu"]. Needs ../shared/data (or $MINISBERT_DATA) and the default-model extra.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .gpu
python - <<'PY'
import json, os
from pathlib import Path
from minisbert.checkpoint import default_model_folder
from minisbert.data import distinct_sentences, read_nli, read_sts_benchmark
data = Path(os.environ.get("MINISBERT_DATA", "../shared/data"))
sentences = distinct_sentences([e for split in ("train", "dev", "test")
                                for e in read_sts_benchmark(data / "stsbenchmark" / f"sts-{split}.csv")])
Path(".gpu/sentences.txt").write_text("\n".join(s.replace("\n", " ") for s in sentences), encoding="utf-8")
pairs = read_nli(data / "nli" / "snli_1.0_train.sample20k.jsonl")[:4000]
Path(".gpu/pairs.jsonl").write_text("".join(json.dumps({"sentence1": e.texts[0], "sentence2": e.texts[1],
                                                        "label": e.label}) + "\n" for e in pairs))
Path(".gpu/tokenizer.json").write_bytes((default_model_folder() / "tokenizer.json").read_bytes())
print(f"{len(sentences)} sentences, {len(pairs)} pairs, tokenizer.json in .gpu/")
PY
du -sh .gpu
