#!/usr/bin/env bash
# Runs benchmarks/decode_speed.py on every Keras backend and prints one
# markdown table of the results on stdout (progress goes to stderr).
#
# Usage:
#   benchmarks/run_all.sh                     # moderate config (see below)
#   benchmarks/run_all.sh --tiny              # quick smoke run
#   BACKENDS="jax torch" benchmarks/run_all.sh --new-tokens 256
#
# Extra arguments are passed to decode_speed.py and override the defaults
# below. Environment:
#   BACKENDS  backends to run (default: "jax tensorflow torch")
#   PYTHON    interpreter (default: python)
#   OUT_DIR   where the per-backend JSONL records and logs go
#             (default: a fresh temporary directory, printed at the end)
#
# Defaults: the 8-layer 512-wide model of decode_speed.py, batch 1 and 4,
# prompts of 64 and 512 tokens, 128 new tokens, one thread per library
# (stable numbers on a small or shared machine; pass --threads 0 for each
# library's default) and two timed calls per implementation (best kept).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
backends="${BACKENDS:-jax tensorflow torch}"
python="${PYTHON:-python}"
out_dir="${OUT_DIR:-$(mktemp -d -t decode_speed.XXXXXX)}"
mkdir -p "$out_dir"

defaults=(--new-tokens 128 --threads 1 --repeats 2)
for arg in "$@"; do
  # The smoke run keeps decode_speed.py's own small workloads.
  [[ "$arg" == "--tiny" ]] && defaults=(--threads 1 --repeats 2)
done

records=()
for backend in $backends; do
  jsonl="$out_dir/$backend.jsonl"
  log="$out_dir/$backend.log"
  rm -f "$jsonl"
  echo "=== $backend (log: $log)" >&2
  start=$(date +%s)
  if KERAS_BACKEND="$backend" TF_CPP_MIN_LOG_LEVEL=2 \
      "$python" "$here/decode_speed.py" "${defaults[@]}" "$@" --json "$jsonl" \
      >"$log" 2>&1; then
    echo "=== $backend done in $(( $(date +%s) - start ))s" >&2
  else
    echo "=== $backend FAILED after $(( $(date +%s) - start ))s; tail of $log:" >&2
    tail -n 20 "$log" >&2
  fi
  [[ -s "$jsonl" ]] && records+=("$jsonl")
done

if [[ ${#records[@]} -eq 0 ]]; then
  echo "no results" >&2
  exit 1
fi
"$python" "$here/decode_speed.py" --summarize "${records[@]}"
echo "(records and logs in $out_dir)" >&2
