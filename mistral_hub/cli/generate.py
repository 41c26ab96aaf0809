"""`mistral-hub generate PRESET PROMPT...`: complete prompts."""

import sys

from mistral_hub.cli import main


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "generate",
        help="Complete one or more prompts.",
        description=(
            "Complete prompts with a model and print the results (prompt and "
            "completion). Prompts come from the arguments, or from stdin when "
            "there are none or the only one is '-' (the whole input is then one "
            "prompt)."
        ),
    )
    parser.add_argument(
        "preset", help="Built-in preset name, hf:// or kaggle:// handle, or directory."
    )
    parser.add_argument("prompts", nargs="*", metavar="PROMPT", help="Prompts (default: stdin).")
    parser.add_argument("--stream", action="store_true", help="Print the text as it is generated.")
    parser.add_argument(
        "--completion-only", action="store_true", help="Print only the generated text."
    )
    main.add_sampling_arguments(parser, max_new_tokens=64)
    main.add_model_arguments(parser)


def _prompts(args):
    if args.prompts and args.prompts != ["-"]:
        return args.prompts
    if sys.stdin.isatty():
        print("Type the prompt, then Ctrl-D.", file=sys.stderr)
    text = sys.stdin.read()
    if not text.strip():
        raise ValueError("The prompt read from stdin is empty.")
    return [text.rstrip("\n")]


def run(args):
    prompts = _prompts(args)
    causal_lm = main.load_causal_lm(args)
    kwargs = main.sampling_kwargs(args)
    for index, prompt in enumerate(prompts):
        if index:
            print()
        if not args.completion_only:
            print(prompt, end="", flush=True)
        if args.stream:
            for piece in causal_lm.stream(prompt, **kwargs):
                print(piece, end="", flush=True)
            print(flush=True)
        else:
            print(causal_lm.generate(prompt, strip_prompt=True, **kwargs), flush=True)
