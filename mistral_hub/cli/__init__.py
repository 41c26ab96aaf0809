"""The `mistral-hub` command line: generate, chat, convert, presets, serve.

Run `mistral-hub --help`, or `python -m mistral_hub.cli --help`.
"""
