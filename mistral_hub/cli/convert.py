"""`mistral-hub convert SOURCE OUTDIR`: between checkpoint formats."""

import sys

from mistral_hub.cli import main


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "convert",
        help="Convert a checkpoint to a Keras preset or to transformers format.",
        description=(
            "Convert a transformers, Mistral-native (params.json) or Keras checkpoint "
            "(local directory, hf:// or kaggle:// handle, or built-in name) to a Keras "
            "preset, or to a transformers directory with --to transformers."
        ),
    )
    parser.add_argument("source", help="Checkpoint or preset to read.")
    parser.add_argument("outdir", help="Directory to write.")
    parser.add_argument(
        "--to",
        choices=("keras", "transformers"),
        default="keras",
        help="Output format (default: keras).",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="Replace a non-empty output directory that is not of the output format.",
    )
    main.add_model_arguments(parser)


def _load(source, dtype):
    from mistral_hub.models.backbone import Backbone
    from mistral_hub.models.causal_lm import CausalLM
    from mistral_hub.utils.presets import get_preset_loader

    kwargs = {"dtype": dtype} if dtype else {}
    loader = get_preset_loader(source)
    try:
        return CausalLM.from_preset(source, **kwargs)
    except FileNotFoundError:
        # A checkpoint without tokenizer files: convert the weights alone.
        print("No tokenizer found: converting the backbone only.", file=sys.stderr)
        return Backbone.from_preset(loader.source, **kwargs)


def run(args):
    print(f"Loading {args.source} ...", file=sys.stderr)
    model = _load(args.source, args.dtype)
    print(f"Writing {args.to} files to {args.outdir} ...", file=sys.stderr)
    if args.to == "keras":
        model.save_to_preset(args.outdir, overwrite=args.overwrite)
    else:
        model.export_to_transformers(args.outdir, overwrite=args.overwrite)
    print(f"Done: {args.outdir}", file=sys.stderr)
