"""Models named by hub id download into the cache; tested against a small hub served on 127.0.0.1."""

import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from minisbert import SentenceTransformer
from minisbert.pooling import Dense, Normalize

REPO = "someone/tiny-model"


class HubHandler(SimpleHTTPRequestHandler):
    """Answers GET /{repo}/resolve/main/{file} from a folder, as the hub's file URLs do."""

    requests: list[str] = []
    tokens: list[str | None] = []

    def translate_path(self, path):
        HubHandler.requests.append(path)
        HubHandler.tokens.append(self.headers.get("Authorization"))
        for revision in ("main", "v1.0"):
            prefix = f"/{REPO}/resolve/{revision}/"
            if path.startswith(prefix):
                return super().translate_path("/" + path[len(prefix):])
        return super().translate_path("/nonexistent")

    def log_message(self, *args):
        pass


@pytest.fixture
def hub(tmp_path, tiny_bert, monkeypatch):
    model = SentenceTransformer(tiny_bert)
    model.after.extend([Dense(48, 12), Normalize()])
    model.save(tmp_path / "served")
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(HubHandler, directory=str(tmp_path / "served")))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    HubHandler.requests, HubHandler.tokens = [], []
    yield model, server
    server.shutdown()


def test_hub_id_downloads_into_the_cache_and_loads(hub, tmp_path):
    served, server = hub
    texts = ["hello world", "Ça va 🙂"]
    model = SentenceTransformer(REPO)
    np.testing.assert_allclose(model.encode(texts), served.encode(texts), atol=1e-6, rtol=0)
    assert f"/{REPO}/resolve/main/2_Dense/model.safetensors" in HubHandler.requests
    cached = tmp_path / "cache" / "someone--tiny-model"
    assert (cached / ".complete").exists() and (cached / "2_Dense" / "config.json").exists()
    server.shutdown()  # the cache serves the next load without the network
    np.testing.assert_allclose(SentenceTransformer(REPO).encode(texts), served.encode(texts), atol=1e-6, rtol=0)


def test_an_early_models_sentence_config_downloads(hub, tmp_path):
    # saved by early sentence-transformers: max_seq_length in a file named after the architecture
    served_folder = tmp_path / "served"
    (served_folder / "sentence_bert_config.json").rename(served_folder / "sentence_roberta_config.json")
    (served_folder / "sentence_roberta_config.json").write_text('{"max_seq_length": 7, "do_lower_case": false}')
    assert SentenceTransformer(REPO).max_seq_length == 7
    assert f"/{REPO}/resolve/main/sentence_distilbert_config.json" not in HubHandler.requests  # none after it


def test_missing_repo_leaves_no_partial_download(hub, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"other/model.*has no config\.json"):
        SentenceTransformer("other/model")
    assert [p.name for p in (tmp_path / "cache").iterdir()] == []


def test_offline_names_the_reason(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="HF_HUB_OFFLINE is set"):
        SentenceTransformer("someone/not-here")


def test_cache_folder_revision_and_token_as_sentence_transformers_names_them(hub, tmp_path):
    served, _ = hub
    texts = ["hello world"]
    model = SentenceTransformer(REPO, cache_folder=tmp_path / "mine", revision="v1.0", token="secret")
    np.testing.assert_allclose(model.encode(texts), served.encode(texts), atol=1e-6, rtol=0)
    assert all(path.startswith(f"/{REPO}/resolve/v1.0/") for path in HubHandler.requests)
    assert set(HubHandler.tokens) == {"Bearer secret"}
    assert (tmp_path / "mine" / "someone--tiny-model@v1.0" / "config.json").exists()
    assert not (tmp_path / "cache").exists()  # not the default cache


def test_local_files_only_never_asks_the_hub(hub, tmp_path):
    with pytest.raises(FileNotFoundError, match="local_files_only is set"):
        SentenceTransformer(REPO, local_files_only=True)
    assert HubHandler.requests == []
    SentenceTransformer(REPO)  # now cached
    SentenceTransformer(REPO, local_files_only=True)


def test_an_unknown_name_lists_the_models_under_weights(tmp_path, tiny_bert, monkeypatch):
    monkeypatch.chdir(tmp_path)
    SentenceTransformer(tiny_bert).save(tmp_path / "weights" / "my-model")
    with pytest.raises(FileNotFoundError, match="The models under weights/ are: my-model"):
        SentenceTransformer("no-such-model")
    assert SentenceTransformer("my-model").encode(["x"]).shape == (1, 48)
