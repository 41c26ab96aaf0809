#!/usr/bin/env python
"""Throughput of the OpenAI-compatible server against sequential generate().

Loads a preset once, then measures, for the same prompts and greedy decoding
of `--max-tokens` new tokens:

* `sequential`: one `generate()` call per request, one after the other, in
  this process (what serving one request at a time gives);
* `server`: the OpenAI-compatible server (uvicorn on 127.0.0.1, in this
  process) driven by `C` concurrent clients for each `--clients C`, each
  client sending `--requests-per-client` completion requests with the
  `openai` package. The server batches concurrent requests into shared
  `generate()` calls.

Every mode runs untimed first (the server twice: batches form differently
from run to run), so that the shapes it uses are compiled (JAX, TensorFlow)
before the timed run. Reported: requests/s, completion
tokens/s (the tokens actually generated, stop tokens included), mean request
latency, and for the server the number of `generate()` calls (fewer calls
than requests means requests were batched).

Examples:

    KERAS_BACKEND=jax python benchmarks/server_throughput.py
    KERAS_BACKEND=torch python benchmarks/server_throughput.py \
        --clients 1 8 32 --requests-per-client 4 --max-tokens 64 --json /tmp/s.jsonl
"""

import argparse
import concurrent.futures
import json
import os
import socket
import sys
import threading
import time

# Run from a checkout without installing: put the repository root first.
_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)

PROMPTS = [
    "def fibonacci(n):",
    "The Zen of Python",
    "import os",
    "class Vector:",
    "Exceptions are",
    "The list type",
    "A dictionary maps",
    "with open(path) as f:",
]


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="mistral_hub_demo")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests-per-client", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--batch-window-ms", type=float, default=10.0)
    parser.add_argument("--json", help="Append one JSON record per mode to this file.")
    return parser.parse_args()


def _sequential(causal_lm, prompts, max_tokens):
    from mistral_hub.models.causal_lm import _TokenizedPrompts

    tokenizer = causal_lm.preprocessor.tokenizer
    latencies, tokens = [], 0
    for prompt in prompts:
        ids = [tokenizer.start_token_id] + tokenizer.tokenize(prompt)
        start = time.perf_counter()
        # Token ids back, to count the generated tokens exactly.
        outputs = causal_lm.generate(
            _TokenizedPrompts([ids], False, return_token_ids=True),
            max_new_tokens=max_tokens,
            sampler="greedy",
            strip_prompt=True,
        )
        latencies.append(time.perf_counter() - start)
        tokens += int(outputs["padding_mask"].sum())
    return latencies, tokens


def _server_round(client, prompts, clients, max_tokens):
    def ask(prompt):
        start = time.perf_counter()
        response = client.completions.create(
            model="bench", prompt=prompt, max_tokens=max_tokens, temperature=0
        )
        return time.perf_counter() - start, response.usage.completion_tokens

    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(ask, prompts, timeout=3600))
    return [r[0] for r in results], sum(r[1] for r in results)


def _start_server(app):
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("The server did not start.")
        time.sleep(0.02)
    return server, thread, f"http://127.0.0.1:{port}/v1"


def _record(mode, clients, requests, seconds, latencies, tokens, calls=None):
    return {
        "mode": mode,
        "clients": clients,
        "requests": requests,
        "seconds": round(seconds, 3),
        "requests_per_s": round(requests / seconds, 2),
        "tokens_per_s": round(tokens / seconds, 1),
        "mean_latency_s": round(sum(latencies) / len(latencies), 3),
        "generate_calls": calls,
    }


def main():
    args = parse_args()
    import keras
    import openai

    from mistral_hub.models.causal_lm import CausalLM
    from mistral_hub.server import create_app

    causal_lm = CausalLM.from_preset(args.preset, dtype=args.dtype)
    total = max(args.clients) * args.requests_per_client
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(total)]
    records = []

    _sequential(causal_lm, PROMPTS, args.max_tokens)  # compile
    start = time.perf_counter()
    latencies, tokens = _sequential(causal_lm, prompts, args.max_tokens)
    records.append(
        _record("sequential", 1, total, time.perf_counter() - start, latencies, tokens, total)
    )

    app = create_app(
        causal_lm,
        model_name="bench",
        max_batch_size=max(args.clients),
        batch_window=args.batch_window_ms / 1000,
    )
    engine = app.state.engine
    server, thread, url = _start_server(app)
    client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=3600)
    try:
        for clients in args.clients:
            requests = prompts[: clients * args.requests_per_client]
            for _ in range(2):  # compile the batch shapes this load forms
                _server_round(client, requests, clients, args.max_tokens)
            calls = engine.stats["generate_calls"]
            start = time.perf_counter()
            latencies, tokens = _server_round(client, requests, clients, args.max_tokens)
            seconds = time.perf_counter() - start
            records.append(
                _record(
                    "server", clients, len(requests), seconds, latencies, tokens,
                    engine.stats["generate_calls"] - calls,
                )
            )  # fmt: skip
    finally:
        server.should_exit = True
        thread.join(60)

    print(
        f"\n{args.preset} ({args.dtype}) on {keras.config.backend()}, greedy, "
        f"{args.max_tokens} new tokens per request\n"
    )
    columns = ["mode", "clients", "requests", "seconds", "requests/s", "tokens/s",
               "mean latency s", "generate calls"]  # fmt: skip
    print("| " + " | ".join(columns) + " |")
    print("|---" * len(columns) + "|")
    for r in records:
        print(
            f"| {r['mode']} | {r['clients']} | {r['requests']} | {r['seconds']} | "
            f"{r['requests_per_s']} | {r['tokens_per_s']} | {r['mean_latency_s']} | "
            f"{r['generate_calls']} |"
        )
    if args.json:
        with open(args.json, "a") as f:
            for r in records:
                f.write(
                    json.dumps({**r, "backend": keras.config.backend(), "preset": args.preset})
                    + "\n"
                )


if __name__ == "__main__":
    main()
