"""Preset file names, and reading files of a preset without leaving it."""

import json
import os

from mistral_hub.utils import hub

CONFIG_FILE = "config.json"
TOKENIZER_CONFIG_FILE = "tokenizer.json"
PREPROCESSOR_CONFIG_FILE = "preprocessor.json"
TASK_CONFIG_FILE = "task.json"
METADATA_FILE = "metadata.json"
MODEL_WEIGHTS_FILE = "model.weights.h5"
SHARDED_MODEL_WEIGHTS_CONFIG_FILE = "model.weights.json"
TASK_WEIGHTS_FILE = "task.weights.h5"
ASSET_DIR = "assets"


def _preset_roots(directory):
    """Real directories the files of a local preset may resolve into.

    The preset directory itself, plus the `blobs` folder next to it when it
    is a huggingface_hub cache snapshot (`<repo>/snapshots/<commit>`, whose
    files are links into `<repo>/blobs`).
    """
    root = os.path.realpath(directory)
    roots = [root]
    parent = os.path.dirname(root)
    blobs = os.path.join(os.path.dirname(parent), "blobs")
    if os.path.basename(parent) == "snapshots" and os.path.isdir(blobs):
        roots.append(blobs)
    return roots


def preset_file(source, path, what="path"):
    """The local path of file `path` of a preset, refusing any way out of it.

    Every file the loaders read goes through here. `path` must be a relative
    path without `..` (see `hub.check_relative_path`), and in a local
    directory it must not resolve, through symbolic links, to a file
    outside the preset: a crafted preset must not make the loader read
    arbitrary local files.

    Args:
        source: a `hub.PresetSource`.
        path: str. The file, relative to the preset root.
        what: str. How to call `path` in error messages (e.g. `"proto"`).

    Returns:
        str. A local path.

    Raises:
        ValueError: for an absolute path, `..`, or a link leaving the
            preset.
        FileNotFoundError: if the preset has no such file.

    Example:
    >>> import os, tempfile
    >>> directory = tempfile.mkdtemp()
    >>> os.symlink("/etc/hostname", os.path.join(directory, "vocabulary.spm"))
    >>> try:
    ...     preset_file(hub.LocalSource(directory), "vocabulary.spm")
    ... except ValueError as e:
    ...     print("outside the preset directory" in str(e))
    True
    """
    hub.check_relative_path(path, what)
    local_path = source.get_file(path)
    if isinstance(source, hub.LocalSource):
        real = os.path.realpath(local_path)
        if not any(
            os.path.commonpath([real, root]) == root for root in _preset_roots(source.directory)
        ):
            raise ValueError(
                f"`{path}` of preset `{source.description}` resolves to `{real}`, "
                "outside the preset directory (a symbolic link?). Copy the file "
                "into the preset instead."
            )
    return local_path


def load_json(source, path):
    """Reads a JSON object file of a preset."""
    local_path = preset_file(source, path)
    try:
        with open(local_path, encoding="utf-8") as f:
            data = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(
            f"`{path}` of preset `{source.description}` is not valid JSON: {e}"
        ) from None
    if not isinstance(data, dict):
        raise ValueError(
            f"`{path}` of preset `{source.description}` must hold a JSON object."
        )
    return data


# ---------------------------------------------------------------------------
# Loaders
# ---------------------------------------------------------------------------
