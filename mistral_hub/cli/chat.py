"""`mistral-hub chat PRESET`: an interactive conversation."""

import sys

from mistral_hub.cli import main

HELP = (
    "Commands: /reset clears the conversation, /system TEXT sets the system "
    "prompt (/system alone removes it), /exit or Ctrl-D leaves."
)


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "chat",
        help="Chat with an instruct model.",
        description=(
            "Chat with an instruct model: type a message, the reply streams back. "
            "Reads lines from the terminal or from piped input. " + HELP
        ),
    )
    parser.add_argument(
        "preset", help="Built-in preset name, hf:// or kaggle:// handle, or directory."
    )
    parser.add_argument("--system", metavar="TEXT", help="System prompt.")
    main.add_sampling_arguments(parser, max_new_tokens=256)
    main.add_model_arguments(parser)


def _lines(interactive):
    """Yields input lines until end of input (Ctrl-D)."""
    if interactive:
        try:
            import readline  # noqa: F401 (line editing and history for input())
        except ImportError:
            pass
    while True:
        try:
            line = input("> ") if interactive else sys.stdin.readline()
        except EOFError:
            print(file=sys.stderr)  # End the prompt's line.
            return
        if not interactive and not line:
            return
        yield line.rstrip("\n")


def run(args):
    interactive = sys.stdin.isatty()
    causal_lm = main.load_causal_lm(args)
    kwargs = main.sampling_kwargs(args)
    system = args.system
    history = []
    if interactive:
        print(f"Chatting with {args.preset}. {HELP}", file=sys.stderr)
    for line in _lines(interactive):
        if not line.strip():
            continue
        if line.startswith("/"):
            command, _, rest = line.partition(" ")
            if command == "/reset":
                history = []
                print("(conversation cleared)", file=sys.stderr)
            elif command == "/system":
                system = rest.strip() or None
                print(
                    "(system prompt set)" if system else "(system prompt removed)", file=sys.stderr
                )
            elif command in ("/exit", "/quit"):
                break
            else:
                print(f"Unknown command {command}. {HELP}", file=sys.stderr)
            continue
        history.append({"role": "user", "content": line})
        messages = ([{"role": "system", "content": system}] if system else []) + history
        reply = causal_lm.chat(
            messages, streamer=lambda piece: print(piece, end="", flush=True), **kwargs
        )
        print(flush=True)
        if not reply.strip():
            # An empty assistant turn cannot be encoded; keep the user's
            # message as the open question.
            history.pop()
            continue
        history.append({"role": "assistant", "content": reply})
