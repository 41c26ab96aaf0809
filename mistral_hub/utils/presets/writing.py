"""Writing presets: the Keras preset files, written atomically.

Files are written into a temporary sibling directory that replaces the
preset only once everything is written (see `preset_writer`).
"""

import contextlib
import datetime
import json
import os
import re
import shutil
import sys
import tempfile

import keras

from mistral_hub.utils import hub
from mistral_hub.utils import validation
from mistral_hub.utils.presets import serialization
from mistral_hub.utils.presets.files import ASSET_DIR
from mistral_hub.utils.presets.files import CONFIG_FILE
from mistral_hub.utils.presets.files import METADATA_FILE
from mistral_hub.utils.presets.files import MODEL_WEIGHTS_FILE
from mistral_hub.utils.presets.files import PREPROCESSOR_CONFIG_FILE
from mistral_hub.utils.presets.files import SHARDED_MODEL_WEIGHTS_CONFIG_FILE
from mistral_hub.utils.presets.files import TASK_CONFIG_FILE
from mistral_hub.utils.presets.files import TOKENIZER_CONFIG_FILE
from mistral_hub.utils.presets.serialization import serialize
from mistral_hub.utils.transformers.safetensors_io import parse_size


def _variables_size_in_bytes(variables):
    seen = {}
    for v in variables:
        seen[id(v)] = v
    total = 0
    for v in seen.values():
        size = 1
        for dim in v.shape:
            size *= int(dim)
        total += size * _dtype_bytes(v.dtype)
    return total


def _dtype_bytes(dtype):
    dtype = keras.backend.standardize_dtype(dtype)
    if dtype == "bool":
        return 1
    bits = re.search(r"(\d+)$", dtype)
    return int(bits.group(1)) // 8 if bits else 4


def _is_keras_preset_dir(path):
    for name in (CONFIG_FILE, TASK_CONFIG_FILE, PREPROCESSOR_CONFIG_FILE, TOKENIZER_CONFIG_FILE):
        file_path = os.path.join(path, name)
        if not os.path.isfile(file_path):
            continue
        try:
            with open(file_path, encoding="utf-8") as f:
                if "registered_name" in json.load(f):
                    return True
        except (OSError, ValueError, TypeError):
            continue
    return False


def _remove(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.remove(path)


class PresetWriter:
    """Writes preset files into a (temporary) directory.

    Files already there may be hard links to a previous version of the
    preset, so every write first removes the path: writing through a link
    would modify the old preset before the new one is complete.
    """

    def __init__(self, directory):
        self.directory = directory

    def path(self, name):
        hub.check_relative_path(name)
        return os.path.join(self.directory, *name.split("/"))

    def write_json(self, name, data):
        path = self.path(name)
        _remove(path)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(json.dumps(data, indent=4))

    def write_backbone(self, backbone, max_shard_size=10):
        self.write_json(CONFIG_FILE, serialize(backbone))
        self.write_json(METADATA_FILE, _metadata(backbone))
        for name in os.listdir(self.directory):
            if name in (MODEL_WEIGHTS_FILE, SHARDED_MODEL_WEIGHTS_CONFIG_FILE) or re.match(
                r"^model_\d+\.weights\.h5$", name
            ):
                _remove(os.path.join(self.directory, name))
        size_gb = _variables_size_in_bytes(backbone.variables) / 1024**3
        if max_shard_size is not None and size_gb > max_shard_size:
            backbone.save_weights(
                self.path(SHARDED_MODEL_WEIGHTS_CONFIG_FILE), max_shard_size=max_shard_size
            )
        else:
            backbone.save_weights(self.path(MODEL_WEIGHTS_FILE))

    def write_tokenizer(self, tokenizer):
        config_file = getattr(tokenizer, "config_file", None) or TOKENIZER_CONFIG_FILE
        if not config_file.endswith(".json") or "/" in config_file:
            raise ValueError(
                "A tokenizer's `config_file` must be a `.json` file name. "
                f"Received: config_file={config_file!r}"
            )
        self.write_json(config_file, serialize(tokenizer))
        asset_dir = self.path(f"{ASSET_DIR}/{config_file.split('.')[0]}")
        _remove(asset_dir)
        os.makedirs(asset_dir)
        tokenizer.save_assets(asset_dir)

    def write_preprocessor(self, preprocessor):
        config_file = getattr(preprocessor, "config_file", None) or PREPROCESSOR_CONFIG_FILE
        if not config_file.endswith(".json") or "/" in config_file:
            raise ValueError(
                "A preprocessor's `config_file` must be a `.json` file name. "
                f"Received: config_file={config_file!r}"
            )
        self.write_json(config_file, serialize(preprocessor))
        if getattr(preprocessor, "tokenizer", None) is not None:
            self.write_tokenizer(preprocessor.tokenizer)

    def write_task(self, task, max_shard_size=10):
        self.write_json(TASK_CONFIG_FILE, serialize(task))
        self.write_backbone(task.backbone, max_shard_size)
        if task.preprocessor is not None:
            self.write_preprocessor(task.preprocessor)
        else:
            # `from_preset` would load a preprocessor left by a previous save.
            for name in (PREPROCESSOR_CONFIG_FILE, TOKENIZER_CONFIG_FILE, ASSET_DIR):
                _remove(self.path(name))


def _metadata(backbone):
    import mistral_hub

    mistral_hub_version = mistral_hub.__version__
    tasks = sorted(
        {
            c.__base__.__name__
            for c in serialization.allowed_classes()
            if getattr(c, "backbone_cls", None) is type(backbone)
            and serialization.kind(c) == "task"
        }
    )
    return {
        "keras_version": keras.version(),
        "mistral_hub_version": mistral_hub_version,
        "parameter_count": backbone.count_params(),
        "date_saved": datetime.datetime.now().strftime("%Y-%m-%d@%H:%M:%S"),
        "tasks": tasks,
    }


def _link_tree(source, target):
    """Recreates `source` in `target` with hard links (copies if need be)."""
    for root, _, names in os.walk(source):
        rel = os.path.relpath(root, source)
        out = target if rel == "." else os.path.join(target, rel)
        os.makedirs(out, exist_ok=True)
        for name in names:
            src, dst = os.path.join(root, name), os.path.join(out, name)
            try:
                os.link(src, dst)
            except OSError:
                shutil.copy2(src, dst)


def _exchange(a, b):
    """Atomically swaps two paths (Linux `renameat2(RENAME_EXCHANGE)`)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


@contextlib.contextmanager
def preset_writer(
    preset_dir, overwrite=False, mergeable=None, kind="Keras preset", part=None, task_file=None
):
    """Context manager that writes a preset atomically.

    Files are written into a temporary sibling directory that replaces
    `preset_dir` only once everything is written, so a crash never leaves a
    half-written preset. Saving into an existing Keras preset keeps its
    other files (e.g. `backbone.save_to_preset(d)` then
    `tokenizer.save_to_preset(d)` builds one preset, as with keras_hub).

    Args:
        preset_dir: str or path. The preset directory.
        overwrite: bool. Required to write into a non-empty directory that is
            not a Keras preset; then, and whenever `overwrite=True`, the
            directory is replaced by exactly what is written.
        mergeable: callable `directory -> bool` telling whether an existing
            directory may be added to; defaults to "is a Keras preset".
        kind: str. What `mergeable` accepts, for the error message.
        part: str. What is written when it is one part of a preset (e.g.
            `"backbone"`), or None when it is a whole task.
        task_file: str. The file only a whole task's preset has (e.g.
            `task.json`): writing just `part` into a directory holding it
            would leave its parts describing different models, so that
            needs `overwrite=True`.

    Yields:
        A `PresetWriter`.

    Raises:
        ValueError: if `preset_dir` is a file, or a non-empty directory that
            is not a Keras preset, or a task preset that `part` would only
            partly replace, and `overwrite` is False.
    """
    validation.check_bool("overwrite", overwrite)
    # Through a symbolic link, the directory it points to is replaced and
    # the link stays.
    preset_dir = os.path.realpath(os.path.expanduser(os.fspath(preset_dir)))
    if os.path.exists(preset_dir) and not os.path.isdir(preset_dir):
        raise ValueError(f"`preset_dir` is a file, not a directory: {preset_dir}")
    existing = os.path.isdir(preset_dir) and bool(os.listdir(preset_dir))
    mergeable = mergeable or _is_keras_preset_dir
    if existing and not overwrite and not mergeable(preset_dir):
        raise ValueError(
            f"`preset_dir` {preset_dir} is not empty and is not a {kind}; "
            "refusing to write into it. Pass `overwrite=True` to replace its "
            "contents."
        )
    if (
        existing
        and not overwrite
        and part is not None
        and os.path.isfile(os.path.join(preset_dir, task_file))
    ):
        raise ValueError(
            f"`preset_dir` {preset_dir} holds a whole task preset "
            f"(`{task_file}`); writing "
            f"only a {part} into it would leave a preset whose parts describe "
            "different models. Save the whole task, save into another "
            "directory, or pass `overwrite=True` to replace the preset with "
            f"just this {part}."
        )
    parent = os.path.dirname(preset_dir)
    os.makedirs(parent, exist_ok=True)
    temp_dir = tempfile.mkdtemp(prefix=f".{os.path.basename(preset_dir)}.tmp-", dir=parent)
    try:
        if existing and not overwrite:
            _link_tree(preset_dir, temp_dir)
        yield PresetWriter(temp_dir)
        os.chmod(temp_dir, 0o777 & ~_umask())
        if not os.path.isdir(preset_dir):
            os.rename(temp_dir, preset_dir)
        elif not os.listdir(preset_dir):
            os.rmdir(preset_dir)
            os.rename(temp_dir, preset_dir)
        elif _exchange(temp_dir, preset_dir):
            shutil.rmtree(temp_dir)  # Now holds the previous version.
        else:
            backup = tempfile.mkdtemp(prefix=f".{os.path.basename(preset_dir)}.old-", dir=parent)
            os.rmdir(backup)
            os.rename(preset_dir, backup)
            os.rename(temp_dir, preset_dir)
            shutil.rmtree(backup)
    except BaseException:
        shutil.rmtree(temp_dir, ignore_errors=True)
        raise


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def shard_size_in_gb(max_shard_size):
    """`save_to_preset`'s `max_shard_size`: GB as a number, or `"5GB"`-style."""
    if max_shard_size is None:
        return None
    if isinstance(max_shard_size, str):
        return parse_size(max_shard_size) / 1024**3
    return validation.check_finite_float(
        "max_shard_size", max_shard_size, low=0.0, include_low=False
    )


def save_backbone(backbone, preset_dir, max_shard_size=10, overwrite=False):
    """Implements `Backbone.save_to_preset`."""
    max_shard_size = shard_size_in_gb(max_shard_size)
    with preset_writer(preset_dir, overwrite, part="backbone", task_file=TASK_CONFIG_FILE) as writer:
        writer.write_backbone(backbone, max_shard_size)


def save_task(task, preset_dir, max_shard_size=10, overwrite=False):
    """Implements `Task.save_to_preset`."""
    max_shard_size = shard_size_in_gb(max_shard_size)
    with preset_writer(preset_dir, overwrite) as writer:
        writer.write_task(task, max_shard_size)


def save_preprocessor(preprocessor, preset_dir, overwrite=False):
    """Implements `Preprocessor.save_to_preset`."""
    with preset_writer(
        preset_dir, overwrite, part="preprocessor", task_file=TASK_CONFIG_FILE
    ) as writer:
        writer.write_preprocessor(preprocessor)


def save_tokenizer(tokenizer, preset_dir, overwrite=False):
    """Implements `Tokenizer.save_to_preset`."""
    with preset_writer(preset_dir, overwrite, part="tokenizer", task_file=TASK_CONFIG_FILE) as writer:
        writer.write_tokenizer(tokenizer)


# ---------------------------------------------------------------------------
# Uploading presets
