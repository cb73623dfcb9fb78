#!/usr/bin/env bash
# The whole GPU check in one command, in under 9 minutes, on a bare NVIDIA GPU machine
# with Python 3.11+ and pip (package registries reachable or not):
#
#   bash scripts/gpu_check.sh            # from the repository root; results in ${OUT:-.}
#
# 1. installs the project (pip install -e '.[test]'); offline, it runs from the source
#    tree (PYTHONPATH) with the packages the machine has;
# 2. makes sure JAX sees the GPU (pip install 'jax[cuda12]' only if it does not) and that
#    torch is there (pip's default Linux wheel, which has CUDA, only if torch is absent).
#    Do NOT run the README's test-suite command on the GPU machine: its torch pin is the
#    CPU build used for the parity tests, and could replace a CUDA torch;
# 3. runs the GPU tests (pytest -m gpu) and the Pallas kernel tests (tests/test_pallas*.py,
#    where this checkout has them);
# 4. runs scripts/bench_gpu.py --out "${OUT:-.}/bench_gpu.json" with what time is left.
#
# Every step has a timeout; the script goes on after a failed step and exits non-zero
# if any step failed. A log is written to ${OUT:-.}/gpu_check.log.
# Environment: PYTHON (default python3), OUT (default .), GPU_CHECK_BUDGET_S (default 540).

set -uo pipefail
cd "$(dirname "$0")/.." || exit 2

OUT_DIR=${OUT:-.}
PY=${PYTHON:-python3}
BUDGET_S=${GPU_CHECK_BUDGET_S:-540}
mkdir -p "$OUT_DIR"
exec > >(tee -a "$OUT_DIR/gpu_check.log") 2>&1
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PIP=("$PY" -m pip install --retries 1 --timeout 15 --disable-pip-version-check -q)
START=$SECONDS
FAILED=()

left() { echo $((BUDGET_S - (SECONDS - START))); }
# cap N: the seconds a step may take: what is left of the budget, at most N, at least 1.
cap() { local l; l=$(left); ((l > $1)) && l=$1; ((l < 1)) && l=1; echo "$l"; }
step() { echo; echo "== [$((SECONDS - START)) s] $*"; }

step "machine"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null \
  || echo "nvidia-smi not found"
"$PY" --version

step "JAX on the GPU"
jax_gpu() {
  timeout 120 "$PY" -c 'import jax, sys; print("jax", jax.__version__, jax.devices()); sys.exit(jax.default_backend() != "gpu")'
}
if ! jax_gpu; then
  echo "JAX does not see a GPU: installing jax[cuda12]"
  timeout 240 "${PIP[@]}" -U 'jax[cuda12]' || echo "pip install 'jax[cuda12]' failed"
  jax_gpu || FAILED+=("jax-gpu")
fi

step "the project: pip install -e '.[test]'"
if ! timeout 180 "${PIP[@]}" -e '.[test]'; then
  echo "pip install -e '.[test]' failed (no registry?): running from the source tree"
  timeout 60 "${PIP[@]}" --no-deps --no-build-isolation -e . \
    || echo "(no editable install either; PYTHONPATH=$PWD serves)"
fi
timeout 120 "$PY" -c 'import flax, pytest, hypothesis, rnnjax.nn; print("rnnjax imports")' \
  || FAILED+=("imports")

step "torch with CUDA"
if ! timeout 60 "$PY" -c 'import torch' 2>/dev/null; then
  echo "torch is absent: installing pip's default Linux wheel (it has CUDA)"
  timeout 240 "${PIP[@]}" torch || echo "pip install torch failed: bench_gpu skips torch"
fi
timeout 60 "$PY" -c 'import torch; print("torch", torch.__version__, "cuda:", torch.cuda.is_available())' \
  || echo "no torch: bench_gpu skips the torch baseline with its reason"

step "GPU tests: pytest -m gpu"
timeout "$(cap 240)" "$PY" -m pytest -m gpu tests/ -q -rs -p no:cacheprovider \
  || FAILED+=("pytest-gpu")

shopt -s nullglob
pallas_tests=(tests/test_pallas*.py)
shopt -u nullglob
if ((${#pallas_tests[@]})); then
  step "Pallas tests: ${pallas_tests[*]}"
  timeout "$(cap 180)" "$PY" -m pytest "${pallas_tests[@]}" -q -rs \
    -p no:cacheprovider || FAILED+=("pytest-pallas")
else
  step "Pallas tests: none in this checkout (tests/test_pallas*.py)"
fi

remaining=$(( $(left) - 10 ))
step "bench_gpu.py (${remaining} s left)"
if ((remaining > 150)); then
  # Cases start only while 90 s are left, so the one running can finish and be written.
  timeout "$remaining" "$PY" scripts/bench_gpu.py --out "$OUT_DIR/bench_gpu.json" \
    --budget-s $((remaining - 90)) || FAILED+=("bench_gpu")
else
  echo "too little time left for the benchmark"
  FAILED+=("bench_gpu-no-time")
fi

step "done in $((SECONDS - START)) s"
if ((${#FAILED[@]})); then
  echo "FAILED: ${FAILED[*]}"
  exit 1
fi
echo "all steps passed"
