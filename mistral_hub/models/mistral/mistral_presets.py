"""Built-in Mistral presets: the Kaggle Models handles keras_hub publishes.

`mistral_hub_demo` is the exception: a tiny preset shipped inside the
package (see `examples/train_demo_preset.py`), so a fresh install can
generate text without network access.

The preset directories are keras_hub presets (bfloat16 weights converted from
the listed Hugging Face repositories); `mistral_hub` loads them directly.
Names, descriptions, parameter counts and handles are those of keras_hub
0.32.
"""

backbone_presets = {
    "mistral_7b_en": {
        "metadata": {
            "description": "Mistral 7B base model",
            "params": 7241732096,
            "path": "mistral",
        },
        "kaggle_handle": "kaggle://keras/mistral/keras/mistral_7b_en/8",
    },
    "mistral_0.3_7b_en": {
        "metadata": {
            "description": "Mistral 7B base version 0.3 model",
            "params": 7248023552,
            "path": "mistral",
        },
        "kaggle_handle": "kaggle://keras/mistral/keras/mistral_0.3_7b_en/1",
    },
    "mistral_instruct_7b_en": {
        "metadata": {
            "description": "Mistral 7B instruct model",
            "params": 7241732096,
            "path": "mistral",
        },
        "kaggle_handle": "kaggle://keras/mistral/keras/mistral_instruct_7b_en/8",
    },
    "mistral_0.2_instruct_7b_en": {
        "metadata": {
            "description": "Mistral 7B instruct version 0.2 model",
            "params": 7241732096,
            "path": "mistral",
        },
        "kaggle_handle": "kaggle://keras/mistral/keras/mistral_0.2_instruct_7b_en/3",
    },
    "mistral_0.3_instruct_7b_en": {
        "metadata": {
            "description": "Mistral 7B instruct version 0.3 model",
            "params": 7248023552,
            "path": "mistral",
        },
        "kaggle_handle": "kaggle://keras/mistral/keras/mistral_0.3_instruct_7b_en/1",
    },
    "magistral_small_2506_en": {
        "metadata": {
            "description": "Magistral Small 2506 model",
            "params": 23572403200,
            "path": "mistral",
        },
        "kaggle_handle": "kaggle://keras/magistral/keras/magistral_small_2506_en/1",
    },
    "magistral_small_2507_en": {
        "metadata": {
            "description": "Magistral Small 2507 model",
            "params": 23572403200,
            "path": "mistral",
        },
        "kaggle_handle": "kaggle://keras/magistral/keras/magistral_small_2507_en/1",
    },
    "mistral_hub_demo": {
        "metadata": {
            "description": (
                "A 1.3M-parameter Mistral trained on the Python documentation "
                "that ships with Python; runs offline, for demos and tests."
            ),
            "params": 1311872,
            "path": "mistral",
        },
        "package_path": "presets/mistral_hub_demo",
    },
}
