#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py says what it runs):
#   benchmarks/gpu_check.sh --out results/gpu_check             # one H100-class GPU, under 8 minutes
#   benchmarks/gpu_check.sh --dry-run --out /tmp/gpu_check       # the same steps on the CPU, tiny configurations
# Runs with the repository's .venv when there is one, else with the python on PATH.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${here}/../.venv/bin/python"
[ -x "${python}" ] || python="$(command -v python3 || command -v python)"
exec "${python}" "${here}/gpu_check.py" "$@"
