"""`CausalLM.get_quantization_layer_structure`.

GPTQ and AWQ through it are tested in `tests/utils/test_calibrated_quantization.py`.
"""

from tests.utils.preset_helpers import tiny_causal_lm


def test_structure_for_gptq_and_awq_only():
    causal_lm = tiny_causal_lm()
    backbone = causal_lm.backbone
    for mode in ("gptq", "awq"):
        structure = causal_lm.get_quantization_layer_structure(mode)
        assert set(structure) == {"pre_block_layers", "sequential_blocks"}
        assert structure["pre_block_layers"] == [backbone.token_embedding]
        assert structure["sequential_blocks"] == list(backbone.transformer_layers)
    for mode in ("int8", "int4", "float8", None):
        assert causal_lm.get_quantization_layer_structure(mode) is None
