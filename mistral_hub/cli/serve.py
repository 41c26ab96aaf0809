"""`mistral-hub serve PRESET`: the OpenAI-compatible server."""

import sys

from mistral_hub.cli import main


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "serve",
        help="Serve a model with an OpenAI-compatible HTTP API.",
        description=(
            "Serve a model with the OpenAI API (/v1/models, /v1/completions, "
            "/v1/chat/completions, streaming included) for any OpenAI client. "
            "Needs the serve extra: pip install 'mistral-hub[serve]'."
        ),
    )
    parser.add_argument(
        "preset", help="Built-in preset name, hf:// or kaggle:// handle, or directory."
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="Interface to listen on (default: 127.0.0.1)."
    )
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default: 8000).")
    parser.add_argument(
        "--model-name",
        metavar="NAME",
        help="Model id clients pass as `model` (default: the preset argument).",
    )
    parser.add_argument(
        "--api-key",
        metavar="KEY",
        help="Require `Authorization: Bearer KEY` (default: $MISTRAL_HUB_API_KEY, else none).",
    )
    parser.add_argument(
        "--context-length",
        type=int,
        metavar="N",
        help="Most prompt plus completion tokens (default: the preprocessor's sequence_length).",
    )
    parser.add_argument(
        "--max-batch-size",
        type=int,
        default=32,
        metavar="N",
        help="Most sequences generated together (default: 32).",
    )
    parser.add_argument(
        "--batch-window-ms",
        type=float,
        default=10.0,
        metavar="MS",
        help="How long a request waits for others to batch with (default: 10).",
    )
    parser.add_argument(
        "--length-bucket",
        type=int,
        default=16,
        metavar="N",
        help=(
            "Generate non-streamed batches to a multiple of N tokens: fewer compiled "
            "shapes, up to N-1 extra decode steps (default: 16)."
        ),
    )
    parser.add_argument(
        "--log-level",
        default="info",
        choices=("critical", "error", "warning", "info", "debug"),
        help="Server log level (default: info).",
    )
    main.add_model_arguments(parser)


def run(args):
    import os

    try:
        import uvicorn  # noqa: F401
        import starlette  # noqa: F401
    except ImportError as error:
        raise ImportError(
            f"`serve` needs {error.name}: pip install 'mistral-hub[serve]'."
        ) from None
    from mistral_hub.server import serve

    causal_lm = main.load_causal_lm(args)
    api_key = args.api_key or os.environ.get("MISTRAL_HUB_API_KEY") or None
    model_name = args.model_name or args.preset
    print(
        f"Serving {model_name} on http://{args.host}:{args.port}/v1 (Ctrl-C stops).",
        file=sys.stderr,
    )
    serve(
        causal_lm,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        model_name=model_name,
        api_key=api_key,
        context_length=args.context_length,
        max_batch_size=args.max_batch_size,
        batch_window=args.batch_window_ms / 1000,
        length_bucket=args.length_bucket,
    )
