"""Reading and writing safetensors checkpoints one tensor at a time.

Reading goes through `safetensors.safe_open` (memory-mapped). Each tensor is
read under its own short-lived `safe_open`, so the mapped pages of the
checkpoint are released after every tensor and the process holds at most
one tensor of the file at a time besides the model itself. Tensors keep the
checkpoint's dtype (bfloat16 arrays are `ml_dtypes.bfloat16`).

Writing streams tensors into the file in order: the header is computed from
shapes and dtypes first, then each tensor is fetched, written and dropped.
"""

import json
import os
import re
import struct

import numpy as np

from mistral_hub.utils import hub
from mistral_hub.utils.presets.files import preset_file

_CODES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
}
_DTYPE_TO_CODE = {v: k for k, v in _CODES.items()}


def _safetensors():
    try:
        import safetensors
    except ImportError:
        raise ImportError(
            "Reading transformers or Mistral checkpoints requires the "
            "`safetensors` package: `pip install safetensors`."
        ) from None
    return safetensors


def _numpy_dtype(name):
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


class SafetensorsCheckpoint:
    """The tensors of a (possibly sharded) safetensors checkpoint.

    Args:
        source: a `mistral_hub.utils.hub.PresetSource`.
        index_file: str. A `*.safetensors.index.json` file whose
            `weight_map` maps tensor names to shard files.
        files: list of str. Safetensors files, when there is no index.

    Example:
    >>> import tempfile, numpy as np
    >>> from mistral_hub.utils.hub import LocalSource
    >>> directory = tempfile.mkdtemp()
    >>> write_safetensors(os.path.join(directory, "model.safetensors"),
    ...     [("w", (2, 3), "float32", lambda: np.ones((2, 3), "float32"))])
    >>> checkpoint = SafetensorsCheckpoint(LocalSource(directory),
    ...                                    files=["model.safetensors"])
    >>> checkpoint.get_tensor("w").shape, checkpoint.dtype("w")
    ((2, 3), 'float32')
    """

    def __init__(self, source, index_file=None, files=None):
        self.source = source
        self._paths = {}
        self._weight_map = {}
        self._dtypes = {}
        if index_file is not None:
            self._read_index(index_file)
        for name in files or ():
            self._read_header(name)

    def _read_index(self, index_file):
        path = self.source.get_file(index_file)
        try:
            with open(path, encoding="utf-8") as f:
                weight_map = json.load(f)["weight_map"]
            items = list(weight_map.items())
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ValueError(
                f"`{index_file}` of preset `{self.source.description}` is not a "
                f"valid safetensors index ({type(e).__name__}: {e})."
            ) from None
        directory = index_file.rpartition("/")[0]
        for tensor, file_name in items:
            if not isinstance(file_name, str) or not file_name.endswith(".safetensors"):
                raise ValueError(
                    f"`{index_file}` of preset `{self.source.description}` maps "
                    f"`{tensor}` to {file_name!r}, which is not a .safetensors file."
                )
            hub.check_relative_path(file_name, "shard file name")
            self._weight_map[tensor] = f"{directory}/{file_name}" if directory else file_name

    def _local_path(self, file_name):
        if file_name not in self._paths:
            self._paths[file_name] = preset_file(
                self.source, file_name, "shard file name"
            )
        return self._paths[file_name]

    def _open(self, file_name):
        safetensors = _safetensors()
        path = self._local_path(file_name)
        try:
            return safetensors.safe_open(path, framework="np")
        except Exception as e:  # SafetensorError is not exported consistently.
            raise ValueError(
                f"Could not read `{file_name}` of preset `{self.source.description}`: "
                f"the file is truncated or not a safetensors file ({e})."
            ) from None

    def _read_header(self, file_name):
        with self._open(file_name) as f:
            for key in f.keys():
                self._weight_map[key] = file_name
                code = f.get_slice(key).get_dtype()
                # Unknown codes (e.g. "F8_E4M3") stay visible for messages.
                self._dtypes[key] = _CODES.get(code, code)

    def keys(self):
        """All tensor names."""
        return list(self._weight_map)

    def has_tensor(self, name):
        return name in self._weight_map

    def source_name(self, name):
        """The name `name` has in the files (see `_RenamedCheckpoint`)."""
        return name

    def dtype(self, name):
        """The stored dtype of a tensor (e.g. `"bfloat16"`, or the raw
        safetensors code such as `"F8_E4M3"` for dtypes numpy lacks)."""
        if name not in self._dtypes:
            self._read_header(self._file_of(name))
        return self._dtypes[name]

    def _file_of(self, name):
        try:
            return self._weight_map[name]
        except KeyError:
            raise ValueError(
                f"The checkpoint of preset `{self.source.description}` has no "
                f"tensor named `{name}`."
            ) from None

    def _read(self, name, read):
        file_name = self._file_of(name)
        with self._open(file_name) as f:
            try:
                return read(f)
            except Exception as e:
                raise ValueError(
                    f"Could not read tensor `{name}` from `{file_name}` of preset "
                    f"`{self.source.description}` ({type(e).__name__}: {e})."
                ) from None

    def get_tensor(self, name):
        """Reads one tensor as a numpy array in its stored dtype."""
        return self._read(name, lambda f: f.get_tensor(name))

    def shape(self, name):
        """The stored shape of a tensor, read from the header only."""
        return tuple(self._read(name, lambda f: f.get_slice(name).get_shape()))

    def get_rows(self, name, start, stop):
        """Reads rows `start:stop` (first axis) of a tensor."""
        return self._read(name, lambda f: f.get_slice(name)[start:stop])


def parse_size(size):
    """Turns `5_000_000`, `"5GB"`, `"500MB"` or `"2GiB"` into bytes.

    Example:
    >>> parse_size("2GB"), parse_size("1KiB")
    (2000000000, 1024)
    """
    if isinstance(size, (int, float)) and not isinstance(size, bool) and size > 0:
        return int(size)
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B)\s*", str(size), re.I)
    if not match:
        raise ValueError(
            "`max_shard_size` must be a positive number of bytes or a string "
            f"like '5GB' or '500MB'. Received: max_shard_size={size!r}"
        )
    unit = match.group(2).upper()
    base = 1024 if "I" in unit else 1000
    power = "KMGT".index(unit[0]) + 1
    return int(float(match.group(1)) * base**power)


def write_safetensors(path, entries, metadata=None):
    """Writes tensors to one safetensors file, fetching them one by one.

    Args:
        path: str. Output file.
        entries: list of `(name, shape, dtype, fetch)` where `fetch()`
            returns the array (called once, in order).
        metadata: dict of str to str for the header; defaults to
            `{"format": "pt"}`, which transformers requires.
    """
    header = {"__metadata__": dict(metadata or {"format": "pt"})}
    offset = 0
    for name, shape, dtype, _ in entries:
        dtype = str(dtype)
        if dtype not in _DTYPE_TO_CODE:
            raise ValueError(f"Cannot write tensor `{name}` of dtype {dtype} to safetensors.")
        size = int(np.prod(shape, dtype=np.int64)) * _numpy_dtype(dtype).itemsize
        header[name] = {
            "dtype": _DTYPE_TO_CODE[dtype],
            "shape": [int(d) for d in shape],
            "data_offsets": [offset, offset + size],
        }
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # Aligns the data for memory mapping.
    if os.path.lexists(path):
        os.remove(path)  # Never write through a hard link to an old file.
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for name, shape, dtype, fetch in entries:
            array = np.asarray(fetch())
            expected = _numpy_dtype(str(dtype))
            if array.dtype != expected:
                array = array.astype(expected)
            if tuple(array.shape) != tuple(int(d) for d in shape):
                raise ValueError(
                    f"Tensor `{name}` has shape {array.shape}, expected {tuple(shape)}."
                )
            array = np.ascontiguousarray(array)
            if array.dtype.byteorder == ">":
                array = array.byteswap().view(array.dtype.newbyteorder("<"))
            f.write(memoryview(array.reshape(-1).view(np.uint8)))
            del array


def write_sharded_safetensors(directory, entries, max_shard_size, prefix="model"):
    """Writes `entries` as `prefix.safetensors` or shards plus an index.

    Shards are named like transformers' (`model-00001-of-00002.safetensors`)
    and listed in `model.safetensors.index.json`.

    Args:
        directory: str. Output directory.
        entries: list of `(name, shape, dtype, fetch)`.
        max_shard_size: bytes, or a string like `"5GB"`.
        prefix: str. File name prefix.

    Returns:
        The list of written file names.
    """
    limit = parse_size(max_shard_size)
    shards, current, current_size, total = [], [], 0, 0
    for entry in entries:
        size = int(np.prod(entry[1], dtype=np.int64)) * _numpy_dtype(str(entry[2])).itemsize
        total += size
        if current and current_size + size > limit:
            shards.append(current)
            current, current_size = [], 0
        current.append(entry)
        current_size += size
    if current or not shards:
        shards.append(current)
    if len(shards) == 1:
        name = f"{prefix}.safetensors"
        write_safetensors(os.path.join(directory, name), shards[0])
        return [name]
    names = []
    weight_map = {}
    for i, shard in enumerate(shards):
        name = f"{prefix}-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        write_safetensors(os.path.join(directory, name), shard)
        weight_map.update({entry[0]: name for entry in shard})
        names.append(name)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    index_path = os.path.join(directory, f"{prefix}.safetensors.index.json")
    if os.path.lexists(index_path):
        os.remove(index_path)
    with open(index_path, "w") as f:
        json.dump(index, f, indent=2)
    return names + [f"{prefix}.safetensors.index.json"]
