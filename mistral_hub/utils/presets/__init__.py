"""Loading and saving presets.

This package holds the implementation behind the `from_preset()`,
`save_to_preset()` and `presets` members of `Backbone`, `Task`,
`Preprocessor` and `Tokenizer`, one concept a module:

- `files`: preset file names; reading files without leaving the preset;
- `registry`: what model families register (classes, built-in presets,
  checkpoint converters), and resolving preset names;
- `serialization`: the preset format (class allowlist, keras_hub's schema,
  dtype checks);
- `loading` and `weights`: the loaders and the Keras weights;
- `from_preset`: detecting a preset's format, the `from_preset()` bodies;
- `writing`: the atomic preset writer and `save_to_preset()` bodies;
- `upload`: `upload_preset()`;
- `memory`: skipping random initial values, returning freed heap.
"""

from mistral_hub.utils.presets.files import load_json
from mistral_hub.utils.presets.files import preset_file
from mistral_hub.utils.presets.from_preset import backbone_from_preset
from mistral_hub.utils.presets.from_preset import get_preset_loader
from mistral_hub.utils.presets.from_preset import preprocessor_from_preset
from mistral_hub.utils.presets.from_preset import task_from_preset
from mistral_hub.utils.presets.from_preset import tokenizer_from_preset
from mistral_hub.utils.presets.loading import load_tokenizer_assets
from mistral_hub.utils.presets.memory import skip_random_initialization
from mistral_hub.utils.presets.memory import trim_memory
from mistral_hub.utils.presets.registry import builtin_presets
from mistral_hub.utils.presets.registry import get_preset_source
from mistral_hub.utils.presets.registry import register_presets
from mistral_hub.utils.presets.serialization import deserialize
from mistral_hub.utils.presets.serialization import serialize
from mistral_hub.utils.presets.upload import upload_preset
from mistral_hub.utils.presets.writing import preset_writer
from mistral_hub.utils.presets.writing import save_backbone
from mistral_hub.utils.presets.writing import save_preprocessor
from mistral_hub.utils.presets.writing import save_task
from mistral_hub.utils.presets.writing import save_tokenizer
