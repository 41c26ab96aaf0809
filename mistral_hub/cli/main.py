"""Entry point of `mistral-hub`: the argument parser and error handling.

Building the parser imports no Keras, so `--help`, `presets` and usage
errors answer at once; the Keras backend is chosen (`--backend`) before a
command imports the model code. Every failure ends with a one-line message
on stderr and a non-zero exit code: 1 for errors, 2 for usage errors, 130
for Ctrl-C. Set `MISTRAL_HUB_DEBUG=1` to see tracebacks.
"""

import argparse
import importlib
import os
import sys

PROG = "mistral-hub"
BACKENDS = ("jax", "tensorflow", "torch")
# Subcommand name -> module in `mistral_hub.cli` with `add_parser()` and
# `run(args)`.
COMMANDS = ("generate", "chat", "convert", "presets", "serve")


def add_model_arguments(parser):
    """`--backend` and `--dtype`, shared by the commands that load a model."""
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        help="Keras backend (default: $KERAS_BACKEND, else Keras' default).",
    )
    parser.add_argument(
        "--dtype",
        help="Weights and compute dtype, e.g. float32 or bfloat16 (default: the preset's).",
    )


def add_sampling_arguments(parser, max_new_tokens):
    """The generation controls shared by `generate` and `chat`."""
    group = parser.add_argument_group("generation")
    group.add_argument(
        "--max-new-tokens",
        type=int,
        default=max_new_tokens,
        metavar="N",
        help=f"Tokens to generate (default: {max_new_tokens}).",
    )
    group.add_argument(
        "--sampler",
        metavar="NAME",
        help="greedy, top_k, top_p, random, beam or contrastive (default: top_k).",
    )
    group.add_argument("--temperature", type=float, metavar="T", help="Sampling temperature.")
    group.add_argument(
        "--top-k", type=int, metavar="K", help="Sample from the K most likely tokens."
    )
    group.add_argument("--top-p", type=float, metavar="P", help="Nucleus sampling threshold.")
    group.add_argument("--seed", type=int, metavar="S", help="Seed, for repeatable sampling.")
    group.add_argument(
        "--stop",
        nargs="+",
        action="extend",
        metavar="STR",
        help="Stop at any of these strings (repeatable).",
    )


def sampling_kwargs(args):
    """`generate()` keyword arguments from the sampling flags."""
    kwargs = {"max_new_tokens": args.max_new_tokens}
    for name in ("sampler", "temperature", "top_k", "top_p", "seed"):
        value = getattr(args, name)
        if value is not None:
            kwargs[name] = value
    if args.stop:
        kwargs["stop_strings"] = args.stop
    return kwargs


def load_causal_lm(args):
    """Loads `args.preset` as a causal LM, with `--dtype` if given."""
    from mistral_hub.models.causal_lm import CausalLM

    kwargs = {"dtype": args.dtype} if args.dtype else {}
    causal_lm = CausalLM.from_preset(args.preset, **kwargs)
    if causal_lm.preprocessor is None:
        raise ValueError(f"Preset {args.preset!r} has no tokenizer, so it cannot generate text.")
    return causal_lm


class _Parser(argparse.ArgumentParser):
    """Reports usage errors on one line, pointing at `--help`."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser():
    parser = _Parser(
        prog=PROG,
        description="Run, chat with, convert and serve Mistral models with mistral_hub.",
        epilog=f"Run '{PROG} COMMAND --help' for the options of a command.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"mistral_hub.cli.{name}").add_parser(subparsers)
    return parser


def _one_line(error):
    message = " ".join(str(error).split())
    if isinstance(error, (KeyError, AttributeError, TypeError)) or not message:
        message = f"{type(error).__name__}: {message}" if message else type(error).__name__
    return message


def main(argv=None):
    """Runs `mistral-hub`; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "backend", None):
        os.environ["KERAS_BACKEND"] = args.backend
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    debug = os.environ.get("MISTRAL_HUB_DEBUG", "") not in ("", "0")
    try:
        command = importlib.import_module(f"mistral_hub.cli.{args.command}")
        return command.run(args) or 0
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): stop quietly.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as error:
        if debug:
            raise
        print(f"{PROG}: error: {_one_line(error)}", file=sys.stderr)
        return 1
