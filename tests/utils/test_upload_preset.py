"""`mistral_hub.upload_preset`: validation, a local Hub server, offline errors.

No network: the Hugging Face upload runs the real `huggingface_hub` client
against a local HTTP server (`HF_ENDPOINT`) that speaks the endpoints an
upload calls (create repo, README probe, preupload, commit) and rebuilds
the committed files. Kaggle uploads are checked up to the point where the
network is needed.
"""

import base64
import http.server
import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import urllib.parse

import pytest

import mistral_hub
from mistral_hub.utils import hub
from mistral_hub.utils import preset_utils
from tests.utils.preset_helpers import tiny_causal_lm

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def preset(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("upload") / "preset")
    tiny_causal_lm(seed=2).save_to_preset(path)
    return path


def _copy(preset, tmp_path):
    target = str(tmp_path / "copy")
    shutil.copytree(preset, target)
    return target


# --- validation, before any request -----------------------------------------


def test_exported_like_keras_hub():
    assert mistral_hub.upload_preset is preset_utils.upload_preset
    assert "upload_preset" in dir(mistral_hub)


@pytest.mark.parametrize(
    "uri, match",
    [
        ("someone/repo", "must be one of"),
        ("s3://bucket/preset", "Unsupported upload scheme"),
        ("hf://owner/repo/extra", "hf://owner/repo"),
        ("hf://owner/repo@dev", "default branch"),
        ("kaggle://owner/model/keras", "owner/model/framework/variation"),
        ("kaggle://owner/model/keras/tiny/3", "without a version"),
        ("kaggle://owner/../keras/tiny", "owner/model/framework/variation"),
    ],
)
def test_malformed_uris(preset, uri, match):
    with pytest.raises(ValueError, match=match) as error:
        mistral_hub.upload_preset(uri, preset)
    assert f"uri={uri!r}" in str(error.value)


def test_invalid_preset_directories(preset, tmp_path):
    uri = "hf://someone/repo"
    with pytest.raises(FileNotFoundError, match="doesn't exist"):
        mistral_hub.upload_preset(uri, str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="directory, not a file"):
        mistral_hub.upload_preset(uri, os.path.join(preset, "config.json"))
    with pytest.raises(FileNotFoundError, match="config.json"):
        mistral_hub.upload_preset(uri, str(tmp_path))

    no_weights = _copy(preset, tmp_path)
    os.remove(os.path.join(no_weights, "model.weights.h5"))
    with pytest.raises(FileNotFoundError, match="weights file is missing"):
        mistral_hub.upload_preset(uri, no_weights)

    truncated = _copy(preset, tmp_path / "t")
    weights = os.path.join(truncated, "model.weights.h5")
    with open(weights, "r+b") as f:
        f.truncate(os.path.getsize(weights) // 2)
    with pytest.raises(ValueError, match="truncated, corrupt"):
        mistral_hub.upload_preset(uri, truncated)

    foreign = _copy(preset, tmp_path / "f")
    config_path = os.path.join(foreign, "config.json")
    with open(config_path, encoding="utf-8") as f:
        config = json.load(f)
    config["registered_name"] = "keras_hub>GemmaBackbone"
    with open(config_path, "w", encoding="utf-8") as f:
        json.dump(config, f)
    with pytest.raises(ValueError, match="GemmaBackbone"):
        mistral_hub.upload_preset(uri, foreign)


def test_transformers_checkpoint_is_refused(tmp_path):
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text(json.dumps({"model_type": "mistral"}))
    (checkpoint / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="not a Keras preset"):
        mistral_hub.upload_preset("hf://someone/repo", str(checkpoint))


# --- offline -----------------------------------------------------------------


def test_hf_offline_mode_fails_before_any_request(preset, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    import huggingface_hub

    def no_request(*args, **kwargs):
        raise AssertionError("no request expected offline")

    monkeypatch.setattr(huggingface_hub, "create_repo", no_request)
    with pytest.raises(ConnectionError, match="HF_HUB_OFFLINE=1"):
        mistral_hub.upload_preset("hf://someone/repo", preset)


def _run(script, env, timeout=120):
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        env=env, capture_output=True, text=True, timeout=timeout,
    )


def test_unreachable_hubs_raise_connection_errors(preset, tmp_path):
    # A port nothing listens on stands in for "no network" (this machine has
    # none anyway): both clients must fail fast with a clear message.
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = f"""
        import sys, time
        sys.path.insert(0, {ROOT!r})
        import mistral_hub
        for uri in ("hf://someone/repo", "kaggle://someone/tiny/keras/tiny"):
            start = time.time()
            try:
                mistral_hub.upload_preset(uri, {preset!r})
            except ConnectionError as e:
                print(uri, "->", type(e).__name__, e, "| %.0fs" % (time.time() - start))
        """
    env = dict(
        os.environ,
        HF_ENDPOINT=f"http://127.0.0.1:{port}",
        HF_HUB_DISABLE_TELEMETRY="1",
        # kagglehub's API at http://localhost (port 80), where nothing listens.
        KAGGLE_API_ENVIRONMENT="LOCALHOST",
        KAGGLE_USERNAME="someone",
        KAGGLE_KEY="0" * 32,
        TF_CPP_MIN_LOG_LEVEL="3",
    )
    result = _run(script, env)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stdout.splitlines() if " -> " in line]
    assert len(lines) == 2, result.stdout + result.stderr[-3000:]
    assert "Could not reach the Hugging Face Hub" in lines[0]
    assert "Could not reach Kaggle" in lines[1]
    assert all("needs network access" in line for line in lines)


# --- Hugging Face: local Hub server -----------------------------------------


class _UploadHub(http.server.ThreadingHTTPServer):
    """Accepts one repository's commits the way the Hub's REST API does."""

    def __init__(self, readme_exists=False):
        super().__init__(("127.0.0.1", 0), _UploadHandler)
        self.requests, self.commits, self.created = [], [], []
        self.readme_exists = readme_exists


class _UploadHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _reply(self, status, body=None, headers=None):
        data = json.dumps(body).encode() if body is not None else b""
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _route(self):
        server = self.server
        path = urllib.parse.urlparse(self.path).path
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        server.requests.append((self.command, path))
        endpoint = f"http://127.0.0.1:{server.server_address[1]}"
        if path == "/api/repos/create":
            request = json.loads(body)
            repo_id = f"{request.get('organization') or 'me'}/{request['name']}"
            server.created.append(repo_id)
            return self._reply(200, {"url": f"{endpoint}/{repo_id}", "name": repo_id})
        if path == "/api/validate-yaml":
            return self._reply(200, {})
        if "/resolve/" in path:
            if path.endswith("/README.md") and server.readme_exists:
                return self._reply(200, headers={"X-Repo-Commit": "a" * 40, "ETag": '"x"'})
            return self._reply(404, headers={"X-Error-Code": "EntryNotFound"})
        if "/preupload/" in path:
            files = json.loads(body)["files"]
            return self._reply(200, {"files": [
                {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                for f in files
            ]})
        if "/commit/" in path:
            files = {}
            for line in body.splitlines():
                item = json.loads(line)
                if item["key"] == "file":
                    value = item["value"]
                    assert value["encoding"] == "base64"
                    files[value["path"]] = base64.b64decode(value["content"])
            server.commits.append((path, files))
            repo_id = path.split("/api/models/")[1].split("/commit/")[0]
            return self._reply(200, {"commitUrl": f"{endpoint}/{repo_id}/commit/{'b' * 40}",
                                     "commitOid": "b" * 40})
        return self._reply(404, {"error": "not found"}, {"X-Error-Code": "RepoNotFound"})

    do_GET = do_HEAD = do_POST = _route


def _upload_through_server(preset, tmp_path, uri, readme_exists=False):
    server = _UploadHub(readme_exists)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    script = f"""
        import sys
        sys.path.insert(0, {ROOT!r})
        import mistral_hub
        mistral_hub.upload_preset({uri!r}, {preset!r})
        """
    env = dict(
        os.environ,
        HF_ENDPOINT=f"http://127.0.0.1:{server.server_address[1]}",
        HF_HUB_CACHE=str(tmp_path / "cache"),
        HF_HUB_DISABLE_XET="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_TOKEN="hf_" + "x" * 34,
        TF_CPP_MIN_LOG_LEVEL="3",
    )
    try:
        result = _run(script, env)
    finally:
        server.shutdown()
        server.server_close()
    assert result.returncode == 0, result.stderr[-3000:]
    return server


def test_hf_upload_through_local_hub_server(preset, tmp_path):
    server = _upload_through_server(preset, tmp_path, "hf://someone/tiny-mistral")
    assert server.created == ["someone/tiny-mistral"]
    assert len(server.commits) == 1
    commit_path, files = server.commits[0]
    assert commit_path == "/api/models/someone/tiny-mistral/commit/main"
    local = hub.LocalSource(preset).list_files()
    assert set(files) == local | {"README.md"}
    for name in local:
        with open(os.path.join(preset, name), "rb") as f:
            assert files[name] == f.read(), name
    card = files["README.md"].decode()
    assert "library_name: keras-hub" in card and "pipeline_tag: text-generation" in card
    assert 'MistralCausalLM.from_preset("hf://someone/tiny-mistral")' in card
    # The preset directory is left as it was (no model card written there).
    assert hub.LocalSource(preset).list_files() == local

    # The uploaded files load back into the same model.
    uploaded = tmp_path / "uploaded"
    for name, data in files.items():
        (uploaded / os.path.dirname(name)).mkdir(parents=True, exist_ok=True)
        (uploaded / name).write_bytes(data)
    from tests.utils.preset_helpers import backbone_logits

    original = mistral_hub.CausalLM.from_preset(preset)
    loaded = mistral_hub.CausalLM.from_preset(str(uploaded))
    import numpy as np

    np.testing.assert_array_equal(
        backbone_logits(loaded.backbone), backbone_logits(original.backbone)
    )


def test_hf_upload_keeps_an_existing_model_card(preset, tmp_path):
    server = _upload_through_server(preset, tmp_path, "hf://someone/has-card", readme_exists=True)
    (_, files), = server.commits
    assert "README.md" not in files
    assert ("HEAD", "/someone/has-card/resolve/main/README.md") in server.requests
