"""The `mistral-hub` command line, run as a user would: in subprocesses."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import openai
import pytest
import torch
import transformers

from tests.models.mistral.hf_reference import make_hf_model
from tests.test_data import mistral_test_proto

SCRIPT = os.path.join(os.path.dirname(sys.executable), "mistral-hub")
COMMANDS = ["generate", "chat", "convert", "presets", "serve"]
# Greedy, one line per reply, on JAX with cheap compilation.
MODEL_FLAGS = ["--backend", "jax"]
SAMPLING = ["--sampler", "greedy", "--max-new-tokens", "12", "--stop", "\n"]
TIMEOUT = 600


def _env(**extra):
    env = dict(os.environ, JAX_DISABLE_MOST_OPTIMIZATIONS="true", MISTRAL_HUB_QUIET="1")
    env.pop("MISTRAL_HUB_DEBUG", None)
    return {**env, **extra}


def _start(*args, input=None, env=None):
    """Starts `python -m mistral_hub.cli ARGS`; its input is written at once."""
    process = subprocess.Popen(
        [sys.executable, "-m", "mistral_hub.cli", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env or _env(),
    )
    if input is not None:
        process.stdin.write(input)
    process.stdin.close()
    process.stdin = None  # `communicate()` must not flush the closed pipe.
    return process


def _finish(process):
    stdout, stderr = process.communicate(timeout=TIMEOUT)
    return process.returncode, stdout, stderr


def _run(*args, **kwargs):
    return _finish(_start(*args, **kwargs))


def _assert_one_line_error(rc, stderr, expected_rc, match):
    assert rc == expected_rc, stderr
    assert "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("mistral-hub") and match in last, stderr


@pytest.fixture(scope="module")
def model_runs():
    """The commands that load a model, started together (they run in parallel)."""
    hello = "hello\n"
    return {
        "generate": _start("generate", "mistral_hub_demo", "def foo", "import os", *SAMPLING, *MODEL_FLAGS),
        "stream": _start(
            "generate", "mistral_hub_demo", "-", "--stream", "--completion-only", *SAMPLING,
            *MODEL_FLAGS, input="def foo",
        ),
        "chat": _start(
            "chat", "mistral_hub_demo", *SAMPLING, *MODEL_FLAGS,
            input=hello + "/reset\n" + hello + "/system Answer in French.\n/reset\n" + hello
            + "/nonsense\n",
        ),
        "unknown": _start("generate", "no_such_preset", "x", *MODEL_FLAGS),
        "offline": _start(
            "generate", "hf://mistral-hub-tests/missing", "x", *MODEL_FLAGS,
            env=_env(HF_HUB_OFFLINE="1"),
        ),
    }  # fmt: skip


# --- without a model: instant ---------------------------------------------------


def test_help_everywhere():
    result = subprocess.run([SCRIPT, "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert result.stdout.startswith("usage: mistral-hub")
    for command in COMMANDS:
        assert command in result.stdout
    for command in COMMANDS:
        rc, stdout, _ = _run(command, "--help")
        assert rc == 0 and stdout.startswith(f"usage: mistral-hub {command}")
    rc, stdout, _ = _run("generate", "--help")
    for flag in ["--max-new-tokens", "--sampler", "--temperature", "--top-k", "--top-p", "--seed",
                 "--stop", "--stream", "--backend", "--dtype"]:  # fmt: skip
        assert flag in stdout


def test_presets():
    rc, stdout, _ = _run("presets")
    assert rc == 0
    lines = {line.split()[0]: line for line in stdout.splitlines()}
    assert "1.3M" in lines["mistral_hub_demo"] and "in the package" in lines["mistral_hub_demo"]
    assert "7.2B" in lines["mistral_7b_en"] and "Mistral 7B base model" in lines["mistral_7b_en"]


@pytest.mark.parametrize(
    "args, match",
    [
        (["generate", "mistral_hub_demo", "x", "--bogus"], "unrecognized arguments: --bogus"),
        (["generate", "mistral_hub_demo", "x", "--backend", "mxnet"], "invalid choice: 'mxnet'"),
        (["generate", "mistral_hub_demo", "x", "--max-new-tokens", "many"], "invalid int value"),
        (["convert", "only_one_argument"], "required: outdir"),
        (["teleport"], "invalid choice: 'teleport'"),
    ],
)
def test_usage_errors(args, match):
    rc, stdout, stderr = _run(*args)
    assert rc == 2 and not stdout
    assert len(stderr.strip().splitlines()) == 1
    _assert_one_line_error(rc, stderr, 2, match)


def test_ctrl_c():
    # `generate -` waits for its prompt on stdin: interrupt it there.
    process = subprocess.Popen(
        [sys.executable, "-m", "mistral_hub.cli", "generate", "mistral_hub_demo", "-"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
    )  # fmt: skip
    time.sleep(2)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    _assert_one_line_error(process.returncode, stderr, 130, "interrupted")


# --- with the demo model ----------------------------------------------------------


def test_generate_and_stream(model_runs):
    rc, generated, stderr = _finish(model_runs["generate"])
    assert rc == 0, stderr
    rc, streamed, stderr = _finish(model_runs["stream"])
    assert rc == 0, stderr
    # The streamed completion (prompt from stdin) is the batch's first one.
    completion = streamed.removesuffix("\n")
    assert completion and "\n" not in completion
    first, blank, second, end = generated.split("\n")
    assert first == "def foo" + completion
    assert blank == "" and second.startswith("import os") and end == ""


def test_chat_with_piped_input(model_runs):
    rc, stdout, stderr = _finish(model_runs["chat"])
    assert rc == 0, stderr
    first, after_reset, with_system = stdout.removesuffix("\n").split("\n")
    assert first and after_reset == first  # /reset forgot the first exchange
    assert with_system != first  # /system changed the prompt
    assert "(conversation cleared)" in stderr and "(system prompt set)" in stderr
    assert "Unknown command /nonsense" in stderr


def test_unknown_preset_and_no_network(model_runs):
    rc, stdout, stderr = _finish(model_runs["unknown"])
    _assert_one_line_error(rc, stderr, 1, "Unknown preset 'no_such_preset'")
    rc, stdout, stderr = _finish(model_runs["offline"])
    _assert_one_line_error(rc, stderr, 1, "hf://mistral-hub-tests/missing")


def test_convert_round_trip(tmp_path):
    hf_model = make_hf_model()
    hf_model.save_pretrained(tmp_path / "hf")
    (tmp_path / "hf" / "tokenizer.model").write_bytes(mistral_test_proto())
    rc, _, stderr = _run("convert", str(tmp_path / "hf"), str(tmp_path / "keras"), *MODEL_FLAGS)
    assert rc == 0, stderr
    with open(tmp_path / "keras" / "task.json") as f:
        assert json.load(f)["registered_name"].endswith("MistralCausalLM")
    rc, _, stderr = _run(
        "convert",
        str(tmp_path / "keras"),
        str(tmp_path / "back"),
        "--to",
        "transformers",
        *MODEL_FLAGS,
    )
    assert rc == 0, stderr
    assert "Done" in stderr
    restored = transformers.MistralForCausalLM.from_pretrained(
        tmp_path / "back", dtype=torch.float32
    )
    expected = hf_model.state_dict()
    for name, tensor in restored.state_dict().items():
        np.testing.assert_array_equal(tensor.numpy(), expected[name].numpy(), err_msg=name)
    # A second conversion to the same place needs --overwrite.
    rc, _, stderr = _run("convert", str(tmp_path / "hf"), str(tmp_path / "back"), *MODEL_FLAGS)
    _assert_one_line_error(rc, stderr, 1, "overwrite")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve():
    port = _free_port()
    process = _start(
        "serve", "mistral_hub_demo", "--port", str(port), "--api-key", "k3y",
        "--model-name", "demo", "--log-level", "warning", *MODEL_FLAGS,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + TIMEOUT
        while True:
            assert process.poll() is None, process.communicate()[1]
            assert time.monotonic() < deadline, "the server did not start"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
                    assert json.load(r)["status"] == "ok"
                break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.2)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="k3y", max_retries=0)
        response = client.chat.completions.create(
            model="demo",
            messages=[{"role": "user", "content": "hello"}],
            max_tokens=4,
            temperature=0,
        )
        assert response.choices[0].message.content and response.usage.completion_tokens <= 4
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(
                base_url=f"http://127.0.0.1:{port}/v1", api_key="no", max_retries=0
            ).models.list()
    finally:
        process.send_signal(signal.SIGINT)
        rc, _, stderr = _finish(process)
    assert rc == 0, stderr
    assert "Traceback" not in stderr
