"""Former home of the preset code, kept for the names imported from it.

The implementation lives in the `mistral_hub.utils.presets` package, one
concept a module; import from there.
"""

# ruff: noqa: F401
from mistral_hub.utils.presets import load_json
from mistral_hub.utils.presets import preset_file
from mistral_hub.utils.presets import backbone_from_preset
from mistral_hub.utils.presets import get_preset_loader
from mistral_hub.utils.presets import preprocessor_from_preset
from mistral_hub.utils.presets import task_from_preset
from mistral_hub.utils.presets import tokenizer_from_preset
from mistral_hub.utils.presets import load_tokenizer_assets
from mistral_hub.utils.presets import skip_random_initialization
from mistral_hub.utils.presets import trim_memory
from mistral_hub.utils.presets import builtin_presets
from mistral_hub.utils.presets import get_preset_source
from mistral_hub.utils.presets import register_presets
from mistral_hub.utils.presets import deserialize
from mistral_hub.utils.presets import serialize
from mistral_hub.utils.presets import upload_preset
from mistral_hub.utils.presets import preset_writer
from mistral_hub.utils.presets import save_backbone
from mistral_hub.utils.presets import save_preprocessor
from mistral_hub.utils.presets import save_task
from mistral_hub.utils.presets import save_tokenizer
from mistral_hub.utils.presets.files import CONFIG_FILE
from mistral_hub.utils.presets.loading import KerasPresetLoader
from mistral_hub.utils.presets.loading import PresetLoader
from mistral_hub.utils.presets.serialization import check_token_ids
from mistral_hub.utils.presets.serialization import resolve_class
from mistral_hub.utils.presets.weights import WeightMismatches
from mistral_hub.utils.presets.weights import progress
from mistral_hub.utils.python_utils import classproperty
