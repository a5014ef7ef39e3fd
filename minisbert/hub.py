"""Fetch a model folder from the Hugging Face hub into the download cache, over plain HTTPS.

Nothing a server sends can write outside the cache: every file name it names (in `modules.json`, in a
safetensors index) must be a plain relative path. A file counts as received only when its byte count equals
`Content-Length` and, for files the hub stores in LFS (it names their sha256 in `X-Linked-Etag`), the sha256
matches. The files land in a staging folder that becomes the cached model only when all are there.
"""

import hashlib
import http.client
import json
import os
import re
import secrets
import shutil
from pathlib import Path, PurePosixPath
from urllib.error import HTTPError, URLError
from urllib.parse import quote, urlsplit
from urllib.request import HTTPRedirectHandler, Request, build_opener

# what the hub accepts as a repo id: an optional owner, then a name; no "..", no "--" (they would let two
# ids share a cache folder, or name one outside it)
REPO_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*$")
SHA256 = re.compile(r"^[0-9a-f]{64}$")
REVISION = re.compile(r"^[A-Za-z0-9][\w.-]*$")
COMPLETE = ".complete"  # written last into a cached folder
# where a sentence model keeps max_seq_length and do_lower_case: the first of these its encoder's folder has, as
# sentence-transformers looks for them (early models were saved with a file named after their architecture)
SENTENCE_CONFIG_FILES = ("sentence_bert_config.json", "sentence_roberta_config.json", "sentence_distilbert_config.json",
                         "sentence_camembert_config.json", "sentence_albert_config.json",
                         "sentence_xlm-roberta_config.json", "sentence_xlnet_config.json")


def cache_dir() -> Path:
    """minisbert's download cache, for models and data sets: $MINISBERT_CACHE, else ~/.cache/minisbert."""
    return Path(os.environ.get("MINISBERT_CACHE", Path.home() / ".cache" / "minisbert"))


def offline() -> bool:
    """Whether HF_HUB_OFFLINE forbids downloads, as huggingface_hub reads it."""
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")


def is_repo_id(name: str) -> bool:
    return bool(REPO_ID.match(name)) and ".." not in name and "--" not in name


def cached_folder(repo_id: str, revision: str | None = None, cache_folder: str | Path | None = None) -> Path:
    """Where a download of `repo_id` at `revision` lives: <cache>/owner--name, with @revision unless main."""
    name = repo_id.replace("/", "--") + (f"@{revision}" if revision not in (None, "main") else "")
    return (Path(cache_folder) if cache_folder else cache_dir()) / name


def relative_path(name, source: str) -> str:
    """`name` if it is a plain relative path (no `..`, not absolute, no backslash), else a ValueError naming `source`."""
    if not isinstance(name, str):
        raise ValueError(f"{source}: the path {name!r} is not a string")
    path = PurePosixPath(name)
    if "\\" in name or path.is_absolute() or ".." in path.parts or ":" in name:
        raise ValueError(f"{source}: refusing the path {name!r}, which points outside the model folder")
    return name


class _RecordRedirects(HTTPRedirectHandler):
    """Follows the hub's redirect to its file store, keeping the sha256 and size the hub names on the way,
    and never carrying the token to another host."""

    def __init__(self):
        self.linked = {}

    def redirect_request(self, request, fp, code, msg, headers, new_url):
        for name in ("X-Linked-Etag", "X-Linked-Size"):
            if headers.get(name):
                self.linked[name] = headers[name].strip('"').removeprefix("W/").strip('"')
        redirected = super().redirect_request(request, fp, code, msg, headers, new_url)
        if redirected is not None and urlsplit(new_url).netloc != urlsplit(request.full_url).netloc:
            redirected.remove_header("Authorization")
        return redirected


def _fetch(url: str, target: Path, headers: dict) -> bool:
    """Download `url` to `target`, checked; False if the server has no such file (404)."""
    redirects = _RecordRedirects()
    size = 0
    try:
        with build_opener(redirects).open(Request(url, headers=headers), timeout=60) as response:
            expected_size = response.headers.get("Content-Length") or redirects.linked.get("X-Linked-Size")
            etag = redirects.linked.get("X-Linked-Etag") or (response.headers.get("ETag") or "").strip('"')
            target.parent.mkdir(parents=True, exist_ok=True)
            digest = hashlib.sha256()
            with open(target, "wb") as out:
                while chunk := response.read(1 << 20):
                    digest.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
    except HTTPError as error:
        if error.code == 404:
            return False
        raise OSError(f"{url}: HTTP {error.code}") from None
    except http.client.IncompleteRead as error:
        raise OSError(f"{url}: received {size + len(error.partial):,} bytes, then the connection closed; nothing was cached, "
                      "try again") from None
    except (URLError, TimeoutError, ConnectionError) as error:
        raise OSError(f"{url}: {getattr(error, 'reason', error)}") from None
    if expected_size is not None and size != int(expected_size):
        raise OSError(f"{url}: received {size:,} of {int(expected_size):,} bytes (the connection closed early); "
                      "nothing was cached, try again")
    if SHA256.match(etag.lower()) and digest.hexdigest() != etag.lower():
        raise OSError(f"{url}: the sha256 of the received file is {digest.hexdigest()}, but the hub names {etag}; "
                      "nothing was cached, try again")
    return True


def _read_json(path: Path, source: str):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{source}: not valid JSON ({error})") from None


def download(repo_id: str, tokenizer_files: tuple[str, ...], revision: str | None = None,
             token: str | bool | None = None, cache_folder: str | Path | None = None) -> Path:
    """The files of a sentence-transformers (or plain Hugging Face) model, all or nothing, into the cache.
    `token`: a hub token, or True/None for $HF_TOKEN, or False for none."""
    if not is_repo_id(repo_id):
        raise ValueError(f"{repo_id!r} is not a hub repo id (owner/name of letters, digits, '.', '_', '-')")
    revision = revision or "main"
    if not REVISION.match(revision):
        raise ValueError(f"revision {revision!r} is not a branch, tag or commit name (letters, digits, '.', '_', '-')")
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    if token is None or token is True:
        token = os.environ.get("HF_TOKEN")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    target = cached_folder(repo_id, revision, cache_folder)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".download-{secrets.token_hex(8)}"
    staging.mkdir()

    def fetch(name: str, source: str = "") -> bool:
        name = relative_path(name, f"{repo_id}/{source}" if source else repo_id)
        return _fetch(f"{endpoint}/{quote(repo_id)}/resolve/{revision}/{quote(name)}", staging / name, headers)

    def fetch_weights(prefix: str) -> None:
        if fetch(prefix + "model.safetensors") or fetch(prefix + "pytorch_model.bin"):
            return
        index = prefix + "model.safetensors.index.json"
        if not fetch(index):
            raise ValueError(f"{repo_id} has neither {prefix}model.safetensors nor {prefix}pytorch_model.bin")
        weight_map = _read_json(staging / index, f"{repo_id}/{index}").get("weight_map")
        if not isinstance(weight_map, dict):
            raise ValueError(f"{repo_id}/{index}: no weight_map")
        for shard in sorted(set(weight_map.values())):
            if not fetch(prefix + relative_path(shard, f"{repo_id}/{index}"), index):
                raise ValueError(f"{repo_id} has no {prefix}{shard}, which {index} names")

    try:
        modules = [{"type": "Transformer", "path": ""}]
        # early sentence models' names only where there is a sentence model (modules.json): in a plain encoder's
        # repo they would be six requests that find nothing
        sentence_config_files = SENTENCE_CONFIG_FILES[:1]
        if fetch("modules.json"):
            sentence_config_files = SENTENCE_CONFIG_FILES
            modules = _read_json(staging / "modules.json", f"{repo_id}/modules.json")
            if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
                raise ValueError(f"{repo_id}/modules.json: expected a list of modules")
        fetch("config_sentence_transformers.json")
        for i, module in enumerate(modules):
            if "path" not in module or "type" not in module:
                raise ValueError(f"{repo_id}/modules.json: module {i} has no {'path' if 'path' not in module else 'type'}")
            path = relative_path(module["path"], f"{repo_id}/modules.json")
            prefix = f"{path.rstrip('/')}/" if path else ""
            kind = str(module["type"]).rsplit(".", 1)[-1]
            if kind == "Transformer":
                if not fetch(prefix + "config.json"):
                    raise ValueError(f"{repo_id} has no {prefix}config.json")
                for name in sentence_config_files:
                    if fetch(prefix + name):
                        break
                for name in tokenizer_files:
                    fetch(prefix + name)
            elif kind in ("Pooling", "Dense", "Normalize"):
                fetch(prefix + "config.json")
            if kind in ("Transformer", "Dense"):
                fetch_weights(prefix)
        (staging / COMPLETE).write_text(repo_id)
        try:
            os.replace(staging, target)
        except OSError:
            if not (target / COMPLETE).exists():  # another process finished the same download first: keep theirs
                raise
        return target
    finally:
        shutil.rmtree(staging, ignore_errors=True)

