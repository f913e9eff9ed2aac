#!/usr/bin/env bash
# Build the wheel folder bench/gpu.sh installs from on a machine with no network (see bench/GPU.md).
#   bash bench/wheels.sh [DIR] [--with-torch]        (run where there is network, in the project's venv)
# DIR (default bench/wheels, ignored by git) gets: requirements.txt (the exact pinned set of this venv, less
# torch and its CUDA libraries unless --with-torch), their wheels, the project's own wheel, and the Kafka jars
# (so the dev broker can start without Maven; it still needs Java).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DIR="$ROOT/bench/wheels"
TORCH=0
for arg in "$@"; do
    case "$arg" in
        --with-torch) TORCH=1 ;;
        -h|--help) sed -n 2,6p "$0"; exit 0 ;;
        -*) echo "wheels.sh: unknown option $arg" >&2; exit 1 ;;
        *) DIR="$arg" ;;
    esac
done
PY=${PYTHON:-python}
mkdir -p "$DIR"

# The exact versions of this venv: what the tests ran with. The project itself is built below.
"$PY" -m pip freeze --exclude-editable | grep -v -i '^kafka-ai-pipeline' > "$DIR/requirements.all.txt"
if [[ $TORCH == 1 ]]; then
    cp "$DIR/requirements.all.txt" "$DIR/requirements.txt"
else
    # torch and its CUDA wheels are several GB: the GPU machine brings its own (bench/GPU.md).
    grep -v -i -E '^(torch|triton|nvidia-)' "$DIR/requirements.all.txt" > "$DIR/requirements.txt"
fi
"$PY" -m pip download --only-binary=:all: --no-deps -r "$DIR/requirements.txt" -d "$DIR"
"$PY" -m pip wheel --no-deps --no-build-isolation -w "$DIR" "$ROOT"

JARS="${PIPELINE_CACHE:-$HOME/.cache/kafka-ai-pipeline}/kafka-4.1.1"
if [[ -f "$JARS/libs/.complete" ]]; then
    rm -rf "$DIR/kafka-4.1.1" && cp -r "$JARS" "$DIR/"
else
    echo "wheels.sh: no Kafka jars in $JARS (run 'python -m pipeline dev up' once to fetch them)" >&2
fi
du -sh "$DIR"
