"""LoRA adapter files of other libraries, read onto a backbone.

- `load_peft_adapter(model, adapter)`: a Hugging Face PEFT LoRA adapter
  directory (`adapter_config.json` + `adapter_model.safetensors`).
- `load_mistral_lora(model, path, scaling=None)`: a mistral-finetune LoRA
  checkpoint (`lora.safetensors`).
- `keras_hub_lora`: keras_hub's `.lora.h5` file, behind
  `Backbone.save_lora_weights` and `Backbone.load_lora_weights`.
"""

from mistral_hub.utils.adapters.mistral_finetune import load_mistral_lora
from mistral_hub.utils.adapters.peft import load_peft_adapter
