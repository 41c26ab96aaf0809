"""Uploading a local Keras preset to Kaggle Models or the Hugging Face Hub."""

import os

from mistral_hub.utils import hub
from mistral_hub.utils.presets import weights
from mistral_hub.utils.presets.files import CONFIG_FILE
from mistral_hub.utils.presets.files import METADATA_FILE
from mistral_hub.utils.presets.files import MODEL_WEIGHTS_FILE
from mistral_hub.utils.presets.files import PREPROCESSOR_CONFIG_FILE
from mistral_hub.utils.presets.files import SHARDED_MODEL_WEIGHTS_CONFIG_FILE
from mistral_hub.utils.presets.files import TASK_CONFIG_FILE
from mistral_hub.utils.presets.files import TOKENIZER_CONFIG_FILE
from mistral_hub.utils.presets.files import load_json
from mistral_hub.utils.presets.serialization import describe
from mistral_hub.utils.presets.serialization import resolve_class


README_FILE = "README.md"

_UPLOAD_FORMS = (
    "An upload URI must be one of:\n"
    "1) a Kaggle Models handle 'kaggle://<owner>/<model>/<framework>/<variation>' "
    "(Kaggle numbers the versions itself),\n"
    "2) a Hugging Face handle 'hf://<owner>/<repo>' (or 'hf://<repo>' for your "
    "own account)."
)


def upload_preset(uri, preset):
    """Uploads a local Keras preset directory to Kaggle Models or the HF Hub.

    The directory must hold a preset written by `save_to_preset` (or by
    keras_hub): a `config.json` naming a Mistral class and readable model
    weights. Both are checked, and the handle validated, before anything is
    sent. A Hugging Face repository is created if needed and gets a model
    card unless it (or the preset) already has a `README.md`.

    Args:
        uri: str. `kaggle://<owner>/<model>/<framework>/<variation>`
            (uploaded with `kagglehub.model_upload`, which creates the next
            version) or `hf://<owner>/<repo>` (uploaded in one commit with
            `huggingface_hub`).
        preset: str or path. The local preset directory.

    Raises:
        ValueError: for a malformed URI or an invalid preset directory.
        FileNotFoundError: if `preset` does not exist or lacks its config
            or weights.
        ConnectionError: if the hub cannot be reached (no network, or
            `HF_HUB_OFFLINE=1` for Hugging Face).
        PermissionError: if the hub refuses the credentials.

    Example:
    >>> import tempfile
    >>> from mistral_hub.models.mistral.mistral_backbone import MistralBackbone
    >>> preset = tempfile.mkdtemp() + "/tiny"
    >>> MistralBackbone(vocabulary_size=10, num_layers=1, num_query_heads=2,
    ...     hidden_dim=8, intermediate_dim=16,
    ...     num_key_value_heads=1).save_to_preset(preset)
    >>> upload_preset("hf://owner/repo/extra", preset)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: Hugging Face handles must have the form ... uri='hf://owner/repo/extra'
    """
    scheme, handle = _parse_upload_uri(uri)
    source = _validated_preset_dir(preset)
    if scheme == hub.KAGGLE_SCHEME:
        _upload_to_kaggle(handle, source)
    else:
        _upload_to_hf(handle, source)


def _parse_upload_uri(uri):
    if isinstance(uri, os.PathLike) or not isinstance(uri, str) or "://" not in uri:
        raise ValueError(f"{_UPLOAD_FORMS}\nReceived: uri={uri!r}")
    scheme, _, handle = uri.partition("://")
    scheme = scheme.lower()
    if scheme == hub.KAGGLE_SCHEME:
        if len(hub.parse_kaggle_handle(handle, "uri").split("/")) != 4:
            raise ValueError(
                "Upload to a Kaggle handle without a version: Kaggle creates the "
                "next version of 'kaggle://<owner>/<model>/<framework>/<variation>'. "
                f"Received: uri={uri!r}"
            )
        return scheme, handle
    if scheme == hub.HF_SCHEME:
        repo_id, revision = hub.parse_hf_handle(handle, "uri")
        if revision is not None:
            raise ValueError(
                "Uploads go to the default branch of a Hugging Face repository; "
                f"drop '@{revision}'. Received: uri={uri!r}"
            )
        return scheme, repo_id
    raise ValueError(
        f"Unsupported upload scheme `{scheme}://`. {_UPLOAD_FORMS}\nReceived: uri={uri!r}"
    )


def _validated_preset_dir(preset):
    """Checks that `preset` is a local Keras preset; returns its source."""
    if not isinstance(preset, (str, os.PathLike)):
        raise ValueError(
            "`preset` must be the path of a local preset directory. "
            f"Received: {type(preset).__name__}"
        )
    directory = os.path.expanduser(os.fspath(preset))
    if not os.path.exists(directory):
        raise FileNotFoundError(f"The preset directory `{directory}` doesn't exist.")
    if not os.path.isdir(directory):
        raise ValueError(
            f"`preset` must be a directory, not a file. Received: preset={directory!r}"
        )
    source = hub.LocalSource(directory)
    if not source.exists(CONFIG_FILE):
        raise FileNotFoundError(
            f"`{CONFIG_FILE}` is missing from the preset directory `{directory}`."
        )
    config = load_json(source, CONFIG_FILE)
    if "registered_name" not in config:
        raise ValueError(
            f"`{directory}` is not a Keras preset (its `{CONFIG_FILE}` has no "
            "`registered_name`; e.g. a transformers checkpoint). Load it with "
            "`from_preset()` and write a Keras preset with `save_to_preset()` "
            "before uploading it."
        )
    resolve_class(config, describe(f"`{CONFIG_FILE}`", source))
    if source.exists(MODEL_WEIGHTS_FILE):
        name = MODEL_WEIGHTS_FILE
    elif source.exists(SHARDED_MODEL_WEIGHTS_CONFIG_FILE):
        name = SHARDED_MODEL_WEIGHTS_CONFIG_FILE
    else:
        raise FileNotFoundError(
            f"The weights file is missing from the preset directory `{directory}`: "
            f"neither `{MODEL_WEIGHTS_FILE}` nor `{SHARDED_MODEL_WEIGHTS_CONFIG_FILE}`."
        )
    what = f"`{name}` of preset `{directory}`"
    try:
        # Reads the HDF5 headers only: a truncated or missing shard shows.
        if not weights.stored_keras_weights(source.get_file(name), what):
            raise ValueError(f"{what} holds no weights.")
    except weights.READ_ERRORS as e:
        raise weights.unreadable(what, e) from e
    for name in (TASK_CONFIG_FILE, PREPROCESSOR_CONFIG_FILE, TOKENIZER_CONFIG_FILE):
        if source.exists(name):
            resolve_class(load_json(source, name), describe(f"`{name}`", source))
    if source.exists(METADATA_FILE):
        load_json(source, METADATA_FILE)
    return source


def _upload_to_kaggle(handle, source):
    try:
        import kagglehub
        from kagglehub.exceptions import KaggleApiHTTPError
    except ImportError:
        raise ImportError(
            "Uploading to Kaggle requires the `kagglehub` package: "
            "`pip install kagglehub`."
        ) from None
    target = f"kaggle://{handle}"
    try:
        kagglehub.model_upload(handle, source.directory)
    except KaggleApiHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        if status in (401, 403):
            raise PermissionError(
                f"Kaggle refused the upload to `{target}` ({status}): set Kaggle "
                "credentials that may write to this owner (`kagglehub.login()`, "
                "`KAGGLE_USERNAME`/`KAGGLE_KEY` or ~/.kaggle/kaggle.json)."
            ) from e
        raise
    except Exception as e:
        if not hub.is_connection_error(e):
            raise
        raise ConnectionError(
            f"Could not reach Kaggle to upload `{source.directory}` to `{target}` "
            f"({type(e).__name__}: {e}). Uploading needs network access."
        ) from e


def _upload_to_hf(repo_id, source):
    try:
        import huggingface_hub
        from huggingface_hub import constants
        from huggingface_hub import errors
    except ImportError:
        raise ImportError(
            "Uploading to the Hugging Face Hub requires the `huggingface_hub` "
            "package: `pip install huggingface_hub`."
        ) from None
    target = f"hf://{repo_id}"
    if hub.hf_offline(constants):
        raise ConnectionError(
            f"Cannot upload to `{target}`: Hugging Face offline mode is on "
            "(`HF_HUB_OFFLINE=1`). Unset it and make sure the Hub is reachable."
        )
    try:
        repo_id = huggingface_hub.create_repo(repo_id, exist_ok=True).repo_id
        operations = [
            huggingface_hub.CommitOperationAdd(
                path_in_repo=path, path_or_fileobj=source.get_file(path)
            )
            for path in sorted(source.list_files())
        ]
        if README_FILE not in source.list_files() and not huggingface_hub.file_exists(
            repo_id, README_FILE
        ):
            card = _model_card(source, repo_id).encode("utf-8")
            operations.append(huggingface_hub.CommitOperationAdd(README_FILE, card))
        huggingface_hub.create_commit(
            repo_id, operations, commit_message="Upload Keras preset with mistral_hub"
        )
    except errors.HFValidationError as e:
        raise ValueError(f"Invalid Hugging Face repository id `{repo_id}`: {e}") from e
    except errors.HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        if status in (401, 403):
            raise PermissionError(
                f"The Hugging Face Hub refused the upload to `{target}` ({status}): "
                "log in with a token that can write to it (`hf auth login` or "
                "`HF_TOKEN`)."
            ) from e
        raise
    except Exception as e:
        if hub.is_connection_error(e):
            raise ConnectionError(
                f"Could not reach the Hugging Face Hub ({constants.ENDPOINT}) to "
                f"upload `{source.directory}` to `{target}` "
                f"({type(e).__name__}: {e}). Uploading needs network access."
            ) from e
        raise


def _model_card(source, repo_id):
    """A short model card: the Hub shows it and tags the Keras library."""
    config = load_json(source, CONFIG_FILE)
    model = config["class_name"].removesuffix("Backbone")
    lines = ["---", "library_name: keras-hub"]
    model_class = config["class_name"]
    if source.exists(TASK_CONFIG_FILE):
        model_class = resolve_class(load_json(source, TASK_CONFIG_FILE)).__name__
        if model_class.endswith("CausalLM"):
            lines.append("pipeline_tag: text-generation")
    lines += [
        "---",
        "",
        f"A `{model}` model in the Keras preset format, uploaded with mistral_hub. "
        "It loads on JAX, TensorFlow and PyTorch with mistral_hub or keras_hub:",
        "",
        "```python",
        "import mistral_hub",
        "",
        f'model = mistral_hub.models.{model_class}.from_preset("hf://{repo_id}")',
        "```",
        "",
        "Model config:",
        "",
    ]
    lines += [f"* **{key}:** {value}" for key, value in config.get("config", {}).items()]
    return "\n".join(lines) + "\n"
