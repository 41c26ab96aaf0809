"""`mistral-hub presets`: the built-in preset names."""

import importlib.util
import os


def add_parser(subparsers):
    subparsers.add_parser(
        "presets",
        help="List the built-in presets.",
        description=(
            "List the built-in preset names with their sizes. Any "
            "hf://owner/repo or kaggle:// handle, or a local directory, works too."
        ),
    )


def _builtin_presets():
    # The preset table is plain data: read it without importing Keras, so
    # that listing is instant.
    package = importlib.util.find_spec("mistral_hub").submodule_search_locations[0]
    path = os.path.join(package, "models", "mistral", "mistral_presets.py")
    spec = importlib.util.spec_from_file_location("_mistral_hub_presets", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.backbone_presets


def _size(params):
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if params >= scale:
            return f"{params / scale:.1f}{suffix}"
    return str(params)


def run(args):
    presets = _builtin_presets()
    width = max(len(name) for name in presets)
    for name, preset in presets.items():
        metadata = preset["metadata"]
        where = "in the package" if "package_path" in preset else "download"
        print(
            f"{name:<{width}}  {_size(metadata['params']):>6}  {where:<14}  "
            f"{metadata['description']}"
        )
