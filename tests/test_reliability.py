"""Nothing lost, nothing let in: saving leaves other files alone and survives a kill, downloads stay inside the
cache and are checked, model folders cannot point outside themselves."""

import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open

from minisbert import SentenceTransformer
from minisbert.checkpoint import PARTIAL

TEXTS = ["A man is playing guitar.", "Someone plays an instrument."]


@pytest.fixture(scope="module")
def minilm(minilm_folder):
    return SentenceTransformer(minilm_folder)


def files_under(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_save_into_a_folder_with_other_files_leaves_them_alone(minilm, tmp_path, monkeypatch):
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "src" / "main.py").write_text("print('mine')")
    (project / "data.csv").write_text("a,b\n")
    (project / "README.md").write_text("my notes")
    others = files_under(project)
    minilm.save(project)
    monkeypatch.chdir(project)
    minilm.save(".")  # the working directory, as '.'
    minilm.save(os.getcwd())  # and by its full name
    after = files_under(project)
    assert {name: after[name] for name in others} == others
    np.testing.assert_array_equal(SentenceTransformer(project).encode(TEXTS), minilm.encode(TEXTS))
    assert not [p for p in project.rglob(f"*{PARTIAL}")]


def test_save_refuses_an_empty_path_and_a_file_and_deletes_nothing(minilm, tmp_path):
    with pytest.raises(ValueError, match="the path is empty"):
        minilm.save("")
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match=r"notes\.txt is a file, not a folder"):
        minilm.save(tmp_path / "notes.txt")
    with pytest.raises(ValueError, match="cannot make the folder"):
        minilm.save(tmp_path / "notes.txt" / "model")
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_saved_files_follow_the_umask(minilm, tmp_path):
    old = os.umask(0o022)
    try:
        minilm.save(tmp_path / "model")
    finally:
        os.umask(old)
    for path in [tmp_path / "model", *(tmp_path / "model").rglob("*")]:
        assert path.stat().st_mode & 0o777 == (0o755 if path.is_dir() else 0o644), path


def test_saved_weights_keep_the_pooler_that_transformers_expects(minilm, minilm_folder, tmp_path):
    minilm.save(tmp_path / "model")
    with safe_open(minilm_folder / "model.safetensors", "pt") as source, \
            safe_open(tmp_path / "model" / "model.safetensors", "pt") as saved:
        assert set(source.keys()) - set(saved.keys()) == {"embeddings.position_ids"}  # a buffer, not a weight
        assert (source.get_tensor("pooler.dense.weight") == saved.get_tensor("pooler.dense.weight")).all()


SAVE_FOREVER = """
import sys, torch
from minisbert import SentenceTransformer
model = SentenceTransformer(sys.argv[1])
with torch.no_grad():
    for p in model.parameters():
        p.mul_(1.01)  # another model of the same shape
print("ready", flush=True)
while True:
    model.save(sys.argv[2])
"""


def test_a_kill_during_save_leaves_a_loadable_model_and_the_next_save_cleans_up(minilm, minilm_folder, tmp_path):
    folder = tmp_path / "model"
    minilm.save(folder)
    old = minilm.encode(TEXTS)
    changed = SentenceTransformer(minilm_folder)
    for p in changed.parameters():
        p.data.mul_(1.01)
    new = changed.encode(TEXTS)
    random.seed(0)
    interrupted = 0
    for attempt in range(6):
        saver = subprocess.Popen([sys.executable, "-c", SAVE_FOREVER, str(minilm_folder), str(folder)],
                                 stdout=subprocess.PIPE, text=True)
        assert saver.stdout.readline().strip() == "ready"
        time.sleep(random.uniform(0.0, 1.5))
        saver.send_signal(signal.SIGKILL)
        saver.wait()
        interrupted += bool(list(folder.rglob(f"*{PARTIAL}")))
        embeddings = SentenceTransformer(folder).encode(TEXTS)
        assert np.allclose(embeddings, old, atol=1e-6) or np.allclose(embeddings, new, atol=1e-6), attempt
    assert interrupted, "no kill landed in the middle of a save"
    minilm.save(folder)
    assert not list(folder.rglob(f"*{PARTIAL}"))
    np.testing.assert_array_equal(SentenceTransformer(folder).encode(TEXTS), old)


class FakeHub(SimpleHTTPRequestHandler):
    """GET /{repo}/resolve/main/{file} from a folder; `damage` maps a file name to a way of serving it badly."""

    damage: dict = {}

    def do_GET(self):
        name = self.path.split("/resolve/main/", 1)[-1]
        how = self.damage.get(name)
        if how is None:
            return super().do_GET()
        body = (Path(self.directory) / name).read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        if how == "wrong sha256":
            self.send_header("ETag", '"' + "0" * 64 + '"')
        self.end_headers()
        self.wfile.write(body[: len(body) // 2] if how == "truncated" else body)
        self.close_connection = True

    def translate_path(self, path):
        return super().translate_path("/" + path.split("/resolve/main/", 1)[-1])

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_hub(tmp_path, tiny_bert, monkeypatch):
    served = tmp_path / "served"
    SentenceTransformer(tiny_bert).save(served)
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(FakeHub, directory=str(served)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    FakeHub.damage = {}
    yield served
    server.shutdown()


def outside_and_cache(tmp_path) -> tuple[set, list]:
    everything = {p for p in tmp_path.rglob("*") if "cache" not in p.relative_to(tmp_path).parts[:1]}
    cache = tmp_path / "cache"
    return everything, sorted(p.name for p in cache.iterdir()) if cache.exists() else []


@pytest.mark.parametrize("path", ["../../escaped", "/tmp/escaped-absolute", "1_Pooling/../../escaped"])
def test_a_hub_model_whose_modules_json_points_outside_is_refused(fake_hub, tmp_path, path):
    modules = json.loads((fake_hub / "modules.json").read_text())
    modules[1]["path"] = path
    (fake_hub / "modules.json").write_text(json.dumps(modules))
    before, _ = outside_and_cache(tmp_path)
    with pytest.raises(FileNotFoundError, match=f"refusing the path '{re.escape(path)}'"):
        SentenceTransformer("someone/tiny")
    after, cached = outside_and_cache(tmp_path)
    assert after == before and cached == []
    assert not Path("/tmp/escaped-absolute").exists()


@pytest.mark.parametrize("damage,message", [("truncated", r"received [\d,]+ of [\d,]+ bytes"),
                                            ("wrong sha256", "the sha256 of the received file")])
def test_a_damaged_download_is_an_error_and_caches_nothing(fake_hub, tmp_path, damage, message):
    FakeHub.damage = {"model.safetensors": damage}
    with pytest.raises(FileNotFoundError, match=message):
        SentenceTransformer("someone/tiny")
    assert outside_and_cache(tmp_path)[1] == []
    FakeHub.damage = {}  # the next try downloads it whole
    texts = ["hello world"]
    np.testing.assert_array_equal(SentenceTransformer("someone/tiny").encode(texts),
                                  SentenceTransformer(fake_hub).encode(texts))


def test_a_corrupt_cached_file_names_the_folder_to_delete(fake_hub, tmp_path):
    SentenceTransformer("someone/tiny")
    cached = tmp_path / "cache" / "someone--tiny"
    data = (cached / "model.safetensors").read_bytes()
    (cached / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=f"delete {re.escape(str(cached))}"):
        SentenceTransformer("someone/tiny")


@pytest.mark.parametrize("repo_id", ["..", "someone/..", "a/b/c", "some--one/x"])
def test_repo_ids_that_could_name_a_folder_outside_the_cache_are_refused(fake_hub, repo_id):
    with pytest.raises(FileNotFoundError, match="not a hub repo id|not found"):
        SentenceTransformer(repo_id)


def test_a_local_folder_whose_paths_lead_outside_is_refused(tiny_bert, tmp_path):
    folder = tmp_path / "model"
    SentenceTransformer(tiny_bert).save(folder)
    modules = json.loads((folder / "modules.json").read_text())
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "config.json").write_text((folder / "1_Pooling" / "config.json").read_text())
    for path in ("../elsewhere", str(tmp_path / "elsewhere")):
        modules[1]["path"] = path
        (folder / "modules.json").write_text(json.dumps(modules))
        with pytest.raises(ValueError, match="refusing the path"):
            SentenceTransformer(folder)
    (folder / "linked").symlink_to(tmp_path / "elsewhere")
    modules[1]["path"] = "linked"
    (folder / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(ValueError, match="outside .* through a link"):
        SentenceTransformer(folder)


def test_a_shard_index_that_points_outside_is_refused(tiny_bert, tmp_path):
    folder = tmp_path / "model"
    SentenceTransformer(tiny_bert).save(folder)
    (folder / "model.safetensors").rename(tmp_path / "shard.safetensors")
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"x": "../shard.safetensors"}}))
    with pytest.raises(ValueError, match="refusing the path '../shard.safetensors'"):
        SentenceTransformer(folder)
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}}))
    with pytest.raises(ValueError, match="no weight_map"):
        SentenceTransformer(folder)


def test_a_training_state_holding_code_is_refused_on_resume(tmp_path):
    import pickle

    import torch

    from minisbert.training import STATE_FILE, read_run_arguments

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"arguments": Evil()}, tmp_path / STATE_FILE, pickle_module=pickle)
    with pytest.raises(ValueError, match="refusing to unpickle"):
        read_run_arguments(tmp_path)
