"""Handle resolution through the real huggingface_hub and kagglehub clients.

No network: the Hugging Face tests use a populated cache with offline mode
on, and a local HTTP server speaking the Hub endpoints that
`list_repo_files` and `hf_hub_download` call (`HF_ENDPOINT`); the Kaggle
tests use a populated `KAGGLEHUB_CACHE` with a versioned handle.
"""

import hashlib
import http.server
import json
import os
import subprocess
import sys
import textwrap
import threading
import urllib.parse

import numpy as np
import pytest

from mistral_hub.models.causal_lm import CausalLM
from mistral_hub.models.mistral.mistral_backbone import MistralBackbone
from mistral_hub.models.mistral.mistral_causal_lm import MistralCausalLM
from mistral_hub.utils import hub
from mistral_hub.utils import preset_utils
from tests.utils.preset_helpers import backbone_logits
from tests.utils.preset_helpers import populate_hf_cache
from tests.utils.preset_helpers import populate_kaggle_cache
from tests.utils.preset_helpers import tiny_causal_lm

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def keras_preset(tmp_path_factory):
    causal_lm = tiny_causal_lm(seed=3)
    preset = str(tmp_path_factory.mktemp("hub") / "preset")
    causal_lm.save_to_preset(preset)
    return causal_lm, preset


# --- handle validation -------------------------------------------------------


@pytest.mark.parametrize(
    "preset",
    [
        "kaggle://keras/mistral/keras",
        "kaggle://keras/mistral/keras/mistral_7b_en/1/extra",
        "kaggle://keras/../keras/mistral_7b_en",
        "kaggle://keras/mistral/keras/mistral_7b_en/latest",
        "kaggle:///keras/mistral/keras/mistral_7b_en",
        "hf://",
        "hf://owner/repo/extra",
        "hf://../repo",
        "hf:///etc/passwd",
        "hf://owner/repo@",
        "hf://owner/repo@../main",
        "s3://bucket/preset",
    ],
)
def test_malformed_handles_raise_value_error(preset):
    with pytest.raises(ValueError):
        MistralBackbone.from_preset(preset)


@pytest.mark.parametrize(
    "path",
    ["", "/etc/passwd", "../config.json", "assets/../../x", "a//b", "./config.json", "a\\b", "C:x"],
)
def test_file_paths_must_stay_inside_the_preset(path):
    with pytest.raises(ValueError):
        hub.check_relative_path(path)


def test_handles_parse():
    assert hub.parse_hf_handle("owner/repo@refs/pr/1") == ("owner/repo", "refs/pr/1")
    assert hub.parse_hf_handle("gpt2") == ("gpt2", None)
    source = preset_utils.get_preset_source("mistral_7b_en")
    assert isinstance(source, hub.KaggleSource)
    assert source.handle == "keras/mistral/keras/mistral_7b_en/8"


def test_local_source_lists_and_fetches(keras_preset):
    _, preset = keras_preset
    source = hub.resolve_source(preset)
    assert "assets/tokenizer/vocabulary.spm" in source.list_files()
    assert source.exists("task.json") and not source.exists("model.weights.json")
    with pytest.raises(FileNotFoundError, match="model.weights.json"):
        source.get_file("model.weights.json")


# --- Hugging Face: offline cache ---------------------------------------------


@pytest.fixture
def offline_hf_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    cache = str(tmp_path / "hf_cache")
    # What HF_HUB_CACHE / HF_HUB_OFFLINE=1 set when the client is imported.
    monkeypatch.setattr(constants, "HF_HUB_CACHE", cache)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def test_hf_keras_preset_from_offline_cache(keras_preset, offline_hf_cache, monkeypatch):
    causal_lm, preset = keras_preset
    commit = "0123456789abcdef0123456789abcdef01234567"
    populate_hf_cache(offline_hf_cache, "someone/tiny-mistral", preset, commit=commit)

    import huggingface_hub

    downloads = []
    real_download = huggingface_hub.hf_hub_download

    def recording_download(**kwargs):
        downloads.append(kwargs["filename"])
        return real_download(**kwargs)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", recording_download)
    for handle in ("hf://someone/tiny-mistral", f"hf://someone/tiny-mistral@{commit}"):
        loaded = CausalLM.from_preset(handle)
        assert type(loaded) is MistralCausalLM
        np.testing.assert_array_equal(
            backbone_logits(loaded.backbone), backbone_logits(causal_lm.backbone)
        )
    # Absent optional files are looked up in the cached listing, never fetched.
    assert "model.weights.json" not in downloads
    assert set(downloads) <= set(hub.LocalSource(preset).list_files())


def test_hf_transformers_checkpoint_from_offline_cache(tmp_path, offline_hf_cache):
    from tests.models.mistral.hf_reference import hf_forward
    from tests.models.mistral.hf_reference import make_hf_model
    from tests.models.mistral.hf_reference import relative_error

    model = make_hf_model()
    model.save_pretrained(tmp_path / "checkpoint", max_shard_size="20KB")
    populate_hf_cache(offline_hf_cache, "someone/hf-mistral", str(tmp_path / "checkpoint"))
    backbone = MistralBackbone.from_preset("hf://someone/hf-mistral@main")
    ids = np.array([[1, 5, 9, 13]], "int32")
    _, expected = hf_forward(model, ids, np.ones_like(ids))
    assert relative_error(backbone_logits(backbone, ids, np.ones_like(ids)), expected) < 1e-4


def test_hf_offline_errors(offline_hf_cache, keras_preset):
    # Not cached: say so and how to get the files, instead of reporting the
    # preset as having no `config.json`.
    with pytest.raises(ConnectionError) as error:
        MistralBackbone.from_preset("hf://someone/not-cached")
    message = str(error.value)
    assert "`config.json` of `hf://someone/not-cached`" in message
    assert "not in the local Hugging Face cache" in message
    assert "HF_HUB_OFFLINE=1" in message
    assert "network access" in message and "local directory" in message
    _, preset = keras_preset
    populate_hf_cache(offline_hf_cache, "someone/tiny", preset)
    # Cached, but without this file: it may only not have been downloaded.
    with pytest.raises(FileNotFoundError, match="model.safetensors.*not in the local Hugging Face cache"):
        preset_utils.get_preset_source("hf://someone/tiny").get_file("model.safetensors")


# --- Hugging Face: local Hub server ------------------------------------------


class _Hub(http.server.ThreadingHTTPServer):
    """Serves one repository the way the Hub's REST endpoints do."""

    def __init__(self, repo_id, files_dir, commit):
        super().__init__(("127.0.0.1", 0), _HubHandler)
        self.repo_id, self.commit, self.requests = repo_id, commit, []
        self.files = hub.LocalSource(files_dir)


class _HubHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _reply(self, status, headers, body=b""):
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _route(self):
        server = self.server
        path = urllib.parse.urlparse(self.path).path
        server.requests.append((self.command, path))
        info = f"/api/models/{server.repo_id}/revision/"
        resolve = f"/{server.repo_id}/resolve/"
        if path.startswith(info) or path == f"/api/models/{server.repo_id}":
            siblings = [{"rfilename": name} for name in sorted(server.files.list_files())]
            body = {"id": server.repo_id, "sha": server.commit, "siblings": siblings}
            return self._reply(200, {"Content-Type": "application/json"},
                               json.dumps(body).encode())
        if path.startswith(resolve):
            _, _, name = path[len(resolve):].partition("/")
            name = urllib.parse.unquote(name)
            if name not in server.files.list_files():
                return self._reply(404, {"X-Error-Code": "EntryNotFound",
                                         "X-Repo-Commit": server.commit})
            data = open(server.files.get_file(name), "rb").read()
            return self._reply(200, {"X-Repo-Commit": server.commit,
                                     "ETag": f'"{hashlib.sha256(data).hexdigest()}"'}, data)
        return self._reply(404, {"X-Error-Code": "RepoNotFound"})

    do_GET = do_HEAD = _route


def test_hf_download_through_local_hub_server(keras_preset, tmp_path):
    """The real client downloads and lists; nothing absent is requested."""
    causal_lm, preset = keras_preset
    server = _Hub("someone/served", preset, commit="f" * 40)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    expected = backbone_logits(causal_lm.backbone)
    np.save(tmp_path / "expected.npy", expected)
    script = textwrap.dedent(
        f"""
        import numpy as np, sys
        sys.path.insert(0, {ROOT!r})
        from mistral_hub.models.causal_lm import CausalLM
        from tests.utils.preset_helpers import backbone_logits
        lm = CausalLM.from_preset("hf://someone/served")
        np.testing.assert_array_equal(
            backbone_logits(lm.backbone), np.load({str(tmp_path / "expected.npy")!r}))
        try:
            CausalLM.from_preset("hf://someone/missing")
        except FileNotFoundError as e:
            print("not found:", e)
        """
    )
    env = dict(
        os.environ,
        HF_ENDPOINT=f"http://127.0.0.1:{server.server_address[1]}",
        HF_HUB_CACHE=str(tmp_path / "cache"),
        HF_HUB_DISABLE_XET="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        TF_CPP_MIN_LOG_LEVEL="3",
    )
    try:
        result = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
        )
    finally:
        server.shutdown()
        server.server_close()
    assert result.returncode == 0, result.stderr[-3000:]
    assert "not found:" in result.stdout and "someone/missing" in result.stdout

    # With the Hub unreachable (server gone, not offline mode), the same
    # handle loads from the cache the first run filled.
    unreachable = subprocess.run(
        [sys.executable, "-c", script.replace('"hf://someone/missing"', '"hf://someone/served"')],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert unreachable.returncode == 0, unreachable.stderr[-3000:]
    fetched = {p.rpartition("/resolve/")[2].partition("/")[2]
               for _, p in server.requests if "/resolve/" in p}
    assert fetched <= hub.LocalSource(preset).list_files()
    assert "model.weights.json" not in fetched
    assert ("GET", "/api/models/someone/served") in server.requests


# --- Kaggle: populated kagglehub cache ---------------------------------------


@pytest.mark.parametrize("bundle", [True, False], ids=["listed", "per_file"])
def test_kaggle_versioned_handle_from_cache(keras_preset, tmp_path, monkeypatch, bundle):
    causal_lm, preset = keras_preset
    cache = str(tmp_path / "kaggle_cache")
    monkeypatch.setenv("KAGGLEHUB_CACHE", cache)
    populate_kaggle_cache(cache, "someone/tiny-mistral/keras/tiny/2", preset, bundle=bundle)
    source = preset_utils.get_preset_source("kaggle://someone/tiny-mistral/keras/tiny/2")
    assert (source.list_files() is not None) == bundle
    loaded = CausalLM.from_preset("kaggle://someone/tiny-mistral/keras/tiny/2")
    np.testing.assert_array_equal(
        backbone_logits(loaded.backbone), backbone_logits(causal_lm.backbone)
    )
    if bundle:
        # Listed: a missing file is known to be missing without any request.
        with pytest.raises(FileNotFoundError, match="model.weights.json"):
            source.get_file("model.weights.json")


def test_builtin_name_resolves_to_kaggle_cache(keras_preset, tmp_path, monkeypatch):
    causal_lm, preset = keras_preset
    cache = str(tmp_path / "kaggle_cache")
    monkeypatch.setenv("KAGGLEHUB_CACHE", cache)
    populate_kaggle_cache(cache, "keras/mistral/keras/mistral_7b_en/8", preset)
    loaded = MistralBackbone.from_preset("mistral_7b_en")
    np.testing.assert_array_equal(backbone_logits(loaded), backbone_logits(causal_lm.backbone))


# --- no network: clear errors, fast ------------------------------------------


@pytest.fixture
def kaggle_unreachable(tmp_path, monkeypatch):
    """An empty kagglehub cache and a Kaggle API where nothing listens."""
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path / "kaggle_cache"))
    # kagglesdk's "LOCALHOST" environment is http://localhost (port 80).
    monkeypatch.setenv("KAGGLE_API_ENVIRONMENT", "LOCALHOST")


def test_builtin_name_offline_says_how_to_get_the_preset(kaggle_unreachable, tmp_path):
    import time

    start = time.time()
    with pytest.raises(ConnectionError) as error:
        MistralBackbone.from_preset("mistral_7b_en")
    assert time.time() - start < 30
    message = str(error.value)
    assert "kaggle://keras/mistral/keras/mistral_7b_en/8" in message
    assert "downloaded once with network access" in message
    assert str(tmp_path / "kaggle_cache") in message and "KAGGLEHUB_CACHE" in message
    assert 'kagglehub.model_download("keras/mistral/keras/mistral_7b_en/8")' in message
    assert 'from_preset("/path/to/folder")' in message


def test_unversioned_kaggle_handle_offline_asks_for_a_version(kaggle_unreachable):
    with pytest.raises(ConnectionError, match=r"add it \(`kaggle://someone/tiny/keras/tiny/<version>`\)"):
        MistralBackbone.from_preset("kaggle://someone/tiny/keras/tiny")


def test_hf_unreachable_hub_fails_fast_with_a_clear_error(keras_preset, tmp_path):
    """No connection (not offline mode): cache only, no minute of retries."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _, preset = keras_preset
    cache = tmp_path / "cache"
    populate_hf_cache(str(cache), "someone/cached", preset)
    script = textwrap.dedent(
        f"""
        import sys, time
        sys.path.insert(0, {ROOT!r})
        from mistral_hub.models.mistral.mistral_backbone import MistralBackbone
        MistralBackbone.from_preset("hf://someone/cached")
        print("cached: loaded")
        start = time.time()
        try:
            MistralBackbone.from_preset("hf://someone/not-cached")
        except ConnectionError as e:
            print("not cached:", e, "| %.1f s" % (time.time() - start))
        """
    )
    env = dict(
        os.environ,
        HF_ENDPOINT=f"http://127.0.0.1:{port}",
        HF_HUB_CACHE=str(cache),
        HF_HUB_DISABLE_TELEMETRY="1",
        TF_CPP_MIN_LOG_LEVEL="3",
    )
    env.pop("HF_HUB_OFFLINE", None)
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "cached: loaded" in result.stdout
    line = next(l for l in result.stdout.splitlines() if l.startswith("not cached:"))
    assert "the Hub could not be reached" in line and "hf download someone/not-cached" in line
    # hf_hub_download alone retries for about a minute before giving up.
    assert float(line.rsplit("| ", 1)[1].split()[0]) < 10, line
