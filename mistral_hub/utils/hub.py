"""Turning preset handles into local files.

A handle is one of:

- `kaggle://owner/model/framework/variation[/version]`, fetched file by file
  with `kagglehub.model_download(handle, path)` (cached by kagglehub under
  `KAGGLEHUB_CACHE`);
- `hf://owner/repo[@revision]`, fetched with
  `huggingface_hub.hf_hub_download(repo_id, filename, revision=...)`
  (cached under `HF_HUB_CACHE`; `HF_HUB_OFFLINE=1` works from the cache);
- a local directory.

Built-in preset names are mapped to their Kaggle handle by
`mistral_hub.utils.preset_utils` before they reach this module.

Without network (or with `HF_HUB_OFFLINE=1`), files come from the clients'
caches, without retrying; a file that is not cached raises a
`ConnectionError` that says how to get the preset (once with network, or
as a local directory).

Each handle becomes a `PresetSource` with `get_file(path)`, `exists(path)`
and `list_files()`. Sources list their files when they can (a local
directory, the Hugging Face file listing, a complete kagglehub cache
entry), so optional files are looked up in the listing instead of being
probed by downloading them.
"""

import json
import os
import re

KAGGLE_SCHEME = "kaggle"
HF_SCHEME = "hf"

# Characters allowed in one segment of a Kaggle handle or Hugging Face repo
# id. Anything else (spaces, `%`, backslashes...) is almost surely a typo and
# could change the meaning of a URL or a cache path.
_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_COMMIT_HASH = re.compile(r"^[0-9a-f]{40}$")

_FORMS = (
    "A preset must be one of:\n"
    "1) a built-in preset name like 'mistral_7b_en' (see `cls.presets`),\n"
    "2) a Kaggle handle like 'kaggle://keras/mistral/keras/mistral_7b_en/8',\n"
    "3) a Hugging Face handle like 'hf://mistralai/Mistral-7B-v0.1' or "
    "'hf://mistralai/Mistral-7B-v0.1@<revision>',\n"
    "4) a path to a local preset directory."
)


def check_relative_path(path, what="path"):
    """Checks that `path` names a file inside a preset, never outside it.

    Handles and file names read from preset JSON files (shard lists, weight
    maps) go through here, so a crafted preset cannot make the loader read
    or download `../../anything`.

    Args:
        path: str. A `/`-separated path relative to the preset root.
        what: str. How to call `path` in the error message.

    Returns:
        `path`, unchanged.

    Raises:
        ValueError: if `path` is empty, absolute, contains a backslash, an
            empty segment, or a `.`/`..` segment.

    Example:
    >>> check_relative_path("assets/tokenizer/vocabulary.spm")
    'assets/tokenizer/vocabulary.spm'
    """
    if not isinstance(path, str) or not path:
        raise ValueError(f"`{what}` must be a non-empty string. Received: {path!r}")
    if path.startswith("/") or "\\" in path or re.match(r"^[A-Za-z]:", path):
        raise ValueError(
            f"`{what}` must be a relative path inside the preset. Received: {path!r}"
        )
    if any(part in ("", ".", "..") for part in path.split("/")):
        raise ValueError(
            f"`{what}` must not contain empty, `.` or `..` segments. Received: {path!r}"
        )
    return path


class PresetSource:
    """Where the files of one preset live. Subclasses fetch them."""

    #: A short human readable name of the preset, used in error messages.
    description = ""

    def get_file(self, path):
        """Returns a local path to the preset file `path`.

        Raises:
            FileNotFoundError: if the preset has no such file.
        """
        raise NotImplementedError

    def list_files(self):
        """Returns the set of file paths of the preset, or None if unknown."""
        return None

    def exists(self, path):
        """Whether the preset has file `path`.

        Uses the file listing when there is one; otherwise tries to fetch the
        file and catches only "not found" errors.
        """
        check_relative_path(path)
        files = self.list_files()
        if files is not None:
            return path in files
        try:
            self.get_file(path)
        except FileNotFoundError:
            return False
        return True

    def missing(self, path):
        return FileNotFoundError(
            f"`{path}` doesn't exist in preset `{self.description}`."
        )


class LocalSource(PresetSource):
    """A preset in a local directory."""

    def __init__(self, directory):
        self.directory = directory
        self.description = directory
        self._files = None

    def get_file(self, path):
        check_relative_path(path)
        local_path = os.path.join(self.directory, *path.split("/"))
        if not os.path.isfile(local_path):
            raise self.missing(path)
        return local_path

    def list_files(self):
        if self._files is None:
            files = set()
            for root, dirs, names in os.walk(self.directory):
                # Hidden folders (.git, .cache) are never part of a preset.
                dirs[:] = [d for d in dirs if not d.startswith(".")]
                rel = os.path.relpath(root, self.directory)
                for name in names:
                    parts = [] if rel == "." else rel.split(os.sep)
                    files.add("/".join(parts + [name]))
            self._files = files
        return self._files


class HuggingFaceSource(PresetSource):
    """A model repository on the Hugging Face Hub (or in its local cache)."""

    def __init__(self, repo_id, revision=None):
        self.repo_id = repo_id
        self.revision = revision
        self.description = f"hf://{repo_id}" + (f"@{revision}" if revision else "")
        self._files = None
        self._listed = False
        # Why the Hub cannot be used (offline mode, no connection), or None.
        self._offline = None

    def _hub(self):
        try:
            import huggingface_hub
        except ImportError:
            raise ImportError(
                f"Loading `{self.description}` requires the `huggingface_hub` "
                "package: `pip install huggingface_hub`."
            ) from None
        return huggingface_hub

    def list_files(self):
        if self._listed:
            return self._files
        self._listed = True
        hub = self._hub()
        from huggingface_hub import constants
        from huggingface_hub import errors

        if hf_offline(constants):
            self._offline = "Hugging Face offline mode is on (`HF_HUB_OFFLINE=1`)"
        else:
            try:
                # One request without retries (`list_repo_files` backs off
                # for ~20 s when the Hub is unreachable).
                info = hub.model_info(self.repo_id, revision=self.revision, timeout=10)
                if info.siblings is not None:
                    self._files = {s.rfilename for s in info.siblings}
                    return self._files
                return None
            except errors.GatedRepoError as e:
                raise FileNotFoundError(
                    f"`{self.description}` is gated: accept its terms on "
                    "huggingface.co and log in (`hf auth login`)."
                ) from e
            except errors.RepositoryNotFoundError as e:
                raise FileNotFoundError(
                    f"Hugging Face repository `{self.repo_id}` was not found "
                    "(or it is private and no valid token was given)."
                ) from e
            except errors.RevisionNotFoundError as e:
                raise ValueError(
                    f"Revision `{self.revision}` does not exist in Hugging Face "
                    f"repository `{self.repo_id}`."
                ) from e
            except Exception as e:  # noqa: BLE001
                # No connection, Hub down, proxy trouble: fall back to what
                # is cached, as `hf_hub_download` itself does. Without a
                # connection, files are then only looked up in the cache
                # (`hf_hub_download` would retry for about a minute).
                if is_connection_error(e) and not isinstance(e, errors.HfHubHTTPError):
                    self._offline = (
                        f"the Hub could not be reached ({type(e).__name__}: {e})"
                    )
        self._files = self._list_cached_files()
        return self._files

    def missing(self, path):
        if self._offline is None:
            return super().missing(path)
        # Offline, the listing may be the cached snapshot, which only holds
        # the files downloaded before.
        return FileNotFoundError(
            f"`{path}` is not in the local Hugging Face cache of "
            f"`{self.description}` and {self._offline}, so the Hub cannot be "
            "asked for it. If the repository has it, load the preset once "
            "with network access, or pass the path of a local copy of the "
            "repository."
        )

    def _not_cached(self, path):
        from huggingface_hub import constants

        reason = self._offline or "the Hub could not be reached"
        return ConnectionError(
            f"Could not load `{path}` of `{self.description}`: it is not in "
            f"the local Hugging Face cache ({constants.HF_HUB_CACHE}) and "
            f"{reason}. Load the preset once with network access (it is "
            "cached for later offline use), or pass the path of a local "
            "directory holding the repository's files, e.g. one made with "
            f"`hf download {self.repo_id} --local-dir <dir>` on a machine "
            "with network: `from_preset(\"<dir>\")`."
        )

    def _list_cached_files(self):
        """Files of the requested revision in the local cache, or None."""
        from huggingface_hub import constants

        storage = os.path.join(
            constants.HF_HUB_CACHE,
            constants.REPO_ID_SEPARATOR.join(["models", *self.repo_id.split("/")]),
        )
        revision = self.revision or constants.DEFAULT_REVISION
        commit = revision if _COMMIT_HASH.match(revision) else None
        if commit is None:
            ref_path = os.path.join(storage, "refs", *revision.split("/"))
            if not os.path.isfile(ref_path):
                return None
            with open(ref_path, encoding="utf-8") as f:
                commit = f.read().strip()
        # huggingface_hub keeps the full listing of a commit once it has
        # seen it; it is exact, unlike the snapshot folder which only holds
        # the files downloaded so far.
        tree_path = os.path.join(storage, "trees", f"{commit}.json")
        if os.path.isfile(tree_path):
            try:
                with open(tree_path, encoding="utf-8") as f:
                    return set(json.load(f)["files"])
            except (OSError, ValueError, KeyError, TypeError):
                pass
        snapshot = os.path.join(storage, "snapshots", commit)
        if not os.path.isdir(snapshot):
            return None
        return LocalSource(snapshot).list_files()

    def get_file(self, path):
        check_relative_path(path)
        files = self.list_files()
        if files is not None and path not in files:
            raise self.missing(path)
        hub = self._hub()
        from huggingface_hub import errors

        try:
            return hub.hf_hub_download(
                repo_id=self.repo_id,
                filename=path,
                revision=self.revision,
                local_files_only=self._offline is not None,
            )
        except errors.EntryNotFoundError as e:
            if isinstance(e, errors.LocalEntryNotFoundError):
                raise self._not_cached(path) from e
            raise self.missing(path) from e
        except errors.OfflineModeIsEnabled as e:
            raise self._not_cached(path) from e
        except errors.GatedRepoError as e:
            raise FileNotFoundError(
                f"`{self.description}` is gated: accept its terms on "
                "huggingface.co and log in (`hf auth login`)."
            ) from e
        except errors.RepositoryNotFoundError as e:
            raise FileNotFoundError(
                f"Hugging Face repository `{self.repo_id}` was not found (or it "
                "is private and no valid token was given)."
            ) from e
        except errors.RevisionNotFoundError as e:
            raise ValueError(
                f"Revision `{self.revision}` does not exist in Hugging Face "
                f"repository `{self.repo_id}`."
            ) from e
        except errors.HFValidationError as e:
            raise ValueError(
                f"Invalid Hugging Face handle `{self.description}`: {e}"
            ) from e


class KaggleSource(PresetSource):
    """A Kaggle Models handle, downloaded file by file into kagglehub's cache."""

    def __init__(self, handle):
        self.handle = handle
        self.description = f"kaggle://{handle}"
        self._files = None
        self._listed = False

    def _kagglehub(self):
        try:
            import kagglehub
        except ImportError:
            raise ImportError(
                f"Loading `{self.description}` requires the `kagglehub` "
                "package: `pip install kagglehub`."
            ) from None
        return kagglehub

    def list_files(self):
        # kagglehub has no offline listing, but a completely downloaded
        # version (`model_download(handle)` without a path) is marked with
        # `<version>.complete` next to its folder; that folder is the listing.
        if self._listed:
            return self._files
        self._listed = True
        parts = self.handle.split("/")
        if len(parts) != 5:
            return None
        from kagglehub.config import get_cache_folder

        base = os.path.join(get_cache_folder(), "models", *parts[:4])
        if os.path.isfile(os.path.join(base, f"{parts[4]}.complete")):
            folder = os.path.join(base, parts[4])
            if os.path.isdir(folder):
                self._files = LocalSource(folder).list_files()
        return self._files

    def get_file(self, path):
        check_relative_path(path)
        files = self.list_files()
        if files is not None and path not in files:
            raise self.missing(path)
        kagglehub = self._kagglehub()
        from kagglehub.exceptions import KaggleApiHTTPError

        try:
            return kagglehub.model_download(self.handle, path)
        except KaggleApiHTTPError as e:
            status = getattr(getattr(e, "response", None), "status_code", None)
            message = str(e)
            if status == 404 or "404 Client Error" in message:
                raise self.missing(path) from e
            if status in (401, 403) or "403 Client Error" in message:
                raise FileNotFoundError(
                    f"`{path}` of `{self.description}` is not accessible. If "
                    "the model is gated, accept its terms on kaggle.com and "
                    "set your Kaggle credentials."
                ) from e
            raise ValueError(
                f"Kaggle API error while fetching `{path}` of "
                f"`{self.description}`: {message}"
            ) from e
        except ValueError as e:
            if "is not present in the model files" in str(e):
                raise self.missing(path) from e
            raise
        except OSError as e:
            if not is_connection_error(e):
                raise
            raise self._not_cached(path, e) from e

    def _not_cached(self, path, error):
        from kagglehub.config import get_cache_folder

        parts = self.handle.split("/")
        if len(parts) == 4:
            cache_note = (
                "Without a version in the handle, Kaggle must be asked for "
                "the latest one: add it "
                f"(`{self.description}/<version>`) to use the cache offline."
            )
        else:
            cache_note = (
                "A preset must be downloaded once with network access; after "
                "that it loads offline from the kagglehub cache "
                f"({get_cache_folder()}, set with `KAGGLEHUB_CACHE`)."
            )
        return ConnectionError(
            f"Could not download `{path}` of preset `{self.description}`: it "
            f"is not in the kagglehub cache and Kaggle could not be reached "
            f"({type(error).__name__}: {error}). {cache_note} To use a copy "
            "made elsewhere, download it on a machine with network "
            f'(`kagglehub.model_download("{self.handle}")`), copy the folder '
            'here and pass its path: `from_preset("/path/to/folder")`.'
        )


def is_connection_error(error):
    """Whether `error` means that a server could not be reached.

    Covers the builtin `ConnectionError` (and huggingface_hub's
    `OfflineModeIsEnabled`), timeouts, requests' connection errors (used by
    kagglehub) and httpx's transport errors (huggingface_hub >= 1.0, whose
    2.x names the package `httpx2`), which are not `OSError`s. HTTP error
    responses are not connection errors.

    Example:
    >>> is_connection_error(ConnectionRefusedError(111, "Connection refused"))
    True
    >>> is_connection_error(ValueError("bad value"))
    False
    """
    if isinstance(error, (ConnectionError, TimeoutError)):
        return True
    for cls in type(error).__mro__:
        package = cls.__module__.split(".")[0]
        if package.startswith("httpx") and cls.__name__ == "TransportError":
            return True
        if package == "requests" and cls.__name__ in ("ConnectionError", "Timeout"):
            return True
    return False


def hf_offline(constants):
    """Whether huggingface_hub's offline mode (`HF_HUB_OFFLINE=1`) is on.

    Args:
        constants: the `huggingface_hub.constants` module.
    """
    # `is_offline_mode()` is recent; older clients only have the constant.
    is_offline_mode = getattr(constants, "is_offline_mode", None)
    if is_offline_mode is not None:
        return is_offline_mode()
    return bool(getattr(constants, "HF_HUB_OFFLINE", False))


def parse_kaggle_handle(handle, argument="preset"):
    """Validates the part after `kaggle://` and returns it.

    `argument` names the argument the handle came from in error messages.

    Raises:
        ValueError: unless it is `owner/model/framework/variation[/version]`
            with a positive integer version.

    Example:
    >>> parse_kaggle_handle("keras/mistral/keras/mistral_7b_en/8")
    'keras/mistral/keras/mistral_7b_en/8'
    """
    parts = handle.split("/")
    if len(parts) not in (4, 5) or not all(_SEGMENT.match(p) for p in parts):
        raise ValueError(
            "Kaggle handles must have the form "
            "'kaggle://owner/model/framework/variation[/version]', e.g. "
            "'kaggle://keras/mistral/keras/mistral_7b_en/8'. Received: "
            f"{argument}='kaggle://{handle}'"
        )
    if len(parts) == 5 and not (parts[4].isdigit() and int(parts[4]) > 0):
        raise ValueError(
            "The version of a Kaggle handle must be a positive integer. "
            f"Received: {argument}='kaggle://{handle}'"
        )
    return handle


def parse_hf_handle(handle, argument="preset"):
    """Splits the part after `hf://` into `(repo_id, revision)`.

    `argument` names the argument the handle came from in error messages.

    Raises:
        ValueError: unless it is `owner/repo[@revision]` (or `repo`).

    Example:
    >>> parse_hf_handle("mistralai/Mistral-7B-v0.1@main")
    ('mistralai/Mistral-7B-v0.1', 'main')
    """
    repo_id, _, revision = handle.partition("@")
    parts = repo_id.split("/")
    if len(parts) not in (1, 2) or not all(_SEGMENT.match(p) for p in parts) or any(
        ".." in p for p in parts
    ):
        raise ValueError(
            "Hugging Face handles must have the form 'hf://owner/repo' or "
            "'hf://owner/repo@revision'. Received: "
            f"{argument}='hf://{handle}'"
        )
    if "@" in handle and (
        not revision
        or revision.startswith("/")
        or ".." in revision
        or not re.match(r"^[A-Za-z0-9._/-]+$", revision)
    ):
        raise ValueError(
            "The revision of a Hugging Face handle must be a branch, tag or "
            f"commit hash. Received: {argument}='hf://{handle}'"
        )
    return repo_id, revision or None


def resolve_source(preset):
    """Returns the `PresetSource` of a handle or local directory.

    Built-in preset names must already have been replaced by their handle.

    Args:
        preset: str or `os.PathLike`. A `kaggle://` or `hf://` handle or a
            local directory.

    Returns:
        A `PresetSource`, or None for a bare name that is neither a handle
        nor an existing directory (the caller reports it as an unknown
        preset name).

    Raises:
        ValueError: for a malformed handle, an unknown scheme, or a file.
        FileNotFoundError: for a path-like string (containing a path
            separator, or starting with `.` or `~`) that does not exist.

    Example:
    >>> resolve_source("hf://mistralai/Mistral-7B-v0.1").description
    'hf://mistralai/Mistral-7B-v0.1'
    """
    if isinstance(preset, os.PathLike):
        preset = os.fspath(preset)
    if not isinstance(preset, str):
        raise ValueError(
            f"`preset` must be a string or a path. Received: {type(preset).__name__}"
        )
    if "://" in preset:
        scheme, _, handle = preset.partition("://")
        scheme = scheme.lower()
        if scheme == KAGGLE_SCHEME:
            return KaggleSource(parse_kaggle_handle(handle))
        if scheme == HF_SCHEME:
            return HuggingFaceSource(*parse_hf_handle(handle))
        raise ValueError(
            f"Unsupported preset scheme `{scheme}://`. {_FORMS}\n"
            f"Received: preset={preset!r}"
        )
    directory = os.path.expanduser(preset)
    if os.path.isdir(directory):
        return LocalSource(directory)
    if os.path.exists(directory):
        raise ValueError(
            f"A local preset must be a directory, not a file. Received: preset={preset!r}"
        )
    if os.sep in preset or "/" in preset or preset.startswith((".", "~")):
        raise FileNotFoundError(f"Preset directory `{preset}` does not exist.")
    return None
