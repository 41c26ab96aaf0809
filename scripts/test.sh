#!/usr/bin/env bash
# Installs mistral_hub with its test dependencies into the active Python
# environment and runs the test suite (KERAS_BACKEND defaults to jax).
#   --no-install  skip the install step
#   --core        only the model/task core (backbone, causal LM, samplers)
set -euo pipefail
cd "$(dirname "$0")/.."

install=1
paths=(tests)
for arg in "$@"; do
    case "$arg" in
        --no-install) install=0 ;;
        --core) paths=(
            tests/models/mistral/test_backbone.py
            tests/models/mistral/test_causal_lm.py
            tests/models/mistral/test_causal_lm_preprocessor.py
            tests/models/mistral/test_generation_controls.py
            tests/models/mistral/test_keras_hub_compat.py
            tests/models/mistral/test_lora_and_quantization.py
            tests/samplers
        ) ;;
        *) echo "unknown argument: $arg" >&2; exit 2 ;;
    esac
done

if [ "$install" = 1 ]; then
    python -m pip install --quiet --upgrade pip
    python -m pip install --quiet -e ".[test]"
fi

export KERAS_BACKEND="${KERAS_BACKEND:-jax}"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-3}"
echo "=== pytest on KERAS_BACKEND=$KERAS_BACKEND"
set +e
python -m pytest -q -p no:cacheprovider "${paths[@]}"
status=$?
set -e
if [ "$status" = 5 ]; then
    echo "pytest collected no tests: failing" >&2
    exit 1
fi
exit "$status"
