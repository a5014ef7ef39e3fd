"""What every results script shares: where the data is, what the run was, and the JSON it writes."""

import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from minisbert.hardware import cpu_capabilities  # noqa: E402


def default_data() -> Path:
    return Path(os.environ.get("MINISBERT_DATA", ROOT.parent / "shared" / "data"))


def run_record(args, **setup) -> dict:
    """The run's description: date, machine, versions, arguments, and what the script adds (`setup`)."""
    try:
        import sentence_transformers
        reference = sentence_transformers.__version__
    except ImportError:
        reference = None
    return {"date": time.strftime("%Y-%m-%d"), "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
            "arguments": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "device": torch.cuda.get_device_name() if getattr(args, "device", "cpu").startswith("cuda")
            else f"CPU: {cpu_capabilities()['cpu']}, {torch.get_num_threads()} threads",
            "python": platform.python_version(), "torch": torch.__version__, "sentence_transformers": reference,
            **setup}


def write_json(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(partial, path)
    print(f"wrote {path}", flush=True)


class Clock:
    def __init__(self):
        self.start = time.perf_counter()

    def seconds(self) -> float:
        return round(time.perf_counter() - self.start, 1)
