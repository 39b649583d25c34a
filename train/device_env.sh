# Sourced by the train/device_*.sh scripts: what every device call starts with.
# $1: "corpus" when the call needs .data/train.txt.xz. Leaves the shell at the
# repository root, with the clock of the whole call (RECUR_T0) shared by nested calls.
: "${OUT:?OUT is not set: run this through the device tool, or export OUT=some/dir}"
export RECUR_T0="${RECUR_T0:-$(date +%s)}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ "${1:-}" = corpus ] && [ ! -f .data/train.txt.xz ]; then
    echo "FATAL: .data/train.txt.xz missing (carry it)"
    exit 2
fi
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
