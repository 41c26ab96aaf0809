"""Model families register themselves; generic code finds them on demand."""

import subprocess
import sys
import textwrap

from mistral_hub.models.mistral.mistral_backbone import MistralBackbone
from mistral_hub.models.mistral.mistral_tekken_tokenizer import MistralTekkenTokenizer
from mistral_hub.models.mistral.mistral_tokenizer import MistralTokenizer
from mistral_hub.tokenizers.sentence_piece_tokenizer import SentencePieceTokenizer
from mistral_hub.utils.presets import registry


def test_generic_code_finds_the_families_in_a_fresh_process():
    # Only generic modules are imported: the lookups import the families.
    script = textwrap.dedent(
        """
        import sys
        from mistral_hub.utils.presets import from_preset, registry
        assert "mistral_hub.models.mistral" not in sys.modules
        source = registry.get_preset_source("mistral_hub_demo")
        backbone_cls = registry.registered_classes()["MistralBackbone"].cls
        backbone = from_preset.backbone_from_preset(backbone_cls, source)
        print(type(backbone).__name__, backbone.count_params())
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[-2:] == ["MistralBackbone", "1311872"]


def test_the_mistral_family_registers_its_classes_presets_and_converter():
    classes = registry.registered_classes()
    assert classes["MistralBackbone"].keras_hub_module == (
        "keras_hub.src.models.mistral.mistral_backbone"
    )
    assert classes["MistralTekkenTokenizer"].keras_hub_config_keys is None
    assert registry.builtin_preset_registry()["mistral_7b_en"][0] is MistralBackbone
    converter = registry.transformers_converter("mistral")
    assert converter.backbone_cls is MistralBackbone
    assert registry.transformers_converter("llama") is None
    assert registry.native_converter({"dim": 8}) is converter
    assert MistralTekkenTokenizer in registry.interchangeable_tokenizers(MistralTokenizer)
    assert registry.interchangeable_tokenizers(SentencePieceTokenizer) == ()
