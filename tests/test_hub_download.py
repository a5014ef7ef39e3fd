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

    def translate_path(self, path):
        prefix = f"/{REPO}/resolve/main/"
        HubHandler.requests.append(path)
        return super().translate_path("/" + path[len(prefix):] if path.startswith(prefix) else "/nonexistent")

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
    HubHandler.requests = []
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


def test_missing_repo_leaves_no_partial_download(hub, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"other/model.*has no config\.json"):
        SentenceTransformer("other/model")
    assert [p.name for p in (tmp_path / "cache").iterdir()] == []


def test_offline_names_the_reason(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="HF_HUB_OFFLINE is set"):
        SentenceTransformer("someone/not-here")
