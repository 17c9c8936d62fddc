# Runner image of the SAM 2 adapter: dataloop.json's computeConfigs[].runtime.runnerImage and
# services[].runtime.runnerImage (docker.io/dataloop/sam2-adapter:<version>) are built from this file.
#
#   docker build -t docker.io/dataloop/sam2-adapter:0.1.0 .
#   docker build --build-arg CHECKPOINT=sam2.1_hiera_tiny -t docker.io/dataloop/sam2-adapter:0.1.0 .   # bake a checkpoint
#   docker push docker.io/dataloop/sam2-adapter:0.1.0
#
# Base: a Dataloop runner image. The Dataloop agent (it loads the module named in dataloop.json, consumes the
# service's queue and runs the functions) runs inside the runner image, and Dataloop's own app images are all
# built FROM these base images for that reason; a plain nvidia/cuda or python image carries no agent.
# The base's CUDA 11.8 toolkit is not what torch uses: the pinned torch wheels bundle their own CUDA runtime,
# cuDNN and NCCL (torch 2.14.1 from PyPI is the CUDA 13.0 build, which needs an NVIDIA driver >= 580 on the node;
# for older drivers build with --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 or similar).
# BASE_IMAGE=python:3.11-slim also builds (the wheels need no system CUDA) and is fine for running the adapter by
# hand, but not as a Dataloop runner.
ARG BASE_IMAGE=hub.dataloop.ai/dtlpy-runner-images/gpu:python3.11_cuda11.8_pytorch2
FROM ${BASE_IMAGE}

# Registry name of a checkpoint (sam2_adapter.models.CHECKPOINTS, e.g. sam2.1_hiera_tiny) to download into the
# image at build time, so the first execution does not download it. Empty: nothing baked, download on first load.
ARG CHECKPOINT=""
# Optional index for torch/torchvision (a download.pytorch.org/whl/cuXXX index); empty: PyPI's build.
ARG TORCH_INDEX_URL=""

# Dataloop's runner images run as uid 1000 with HOME=/tmp and work in /tmp/app (their own app images install with
# --user there and keep weights under /tmp/app); the base images have that user already, a generic base gets one.
# The Dataloop base image installs its own torch with --user as root into /tmp/.local: uid 1000 is given it, so
# that the pinned torch can replace it. The checkpoint cache is writable by whichever uid the platform runs.
USER root
RUN (getent passwd 1000 >/dev/null || useradd --uid 1000 --home-dir /tmp --no-create-home --shell /bin/sh runner) \
    && mkdir -p /tmp/app /tmp/.local /opt/sam2-adapter/checkpoints \
    && chown -R 1000 /tmp/app /tmp/.local /opt/sam2-adapter \
    && chmod 1777 /opt/sam2-adapter/checkpoints

USER 1000
ENV HOME=/tmp \
    PATH=/tmp/.local/bin:${PATH} \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    SAM2_ADAPTER_CACHE=/opt/sam2-adapter/checkpoints
WORKDIR /tmp/app

# Dependencies, installed for the runtime user (--user: the user site wins over any torch the base image has).
# torch/torchvision first, so that sam2 (an sdist on PyPI that imports torch to build) builds against the pinned
# torch without build isolation; SAM2_BUILD_CUDA=0 skips its optional CUDA extension (it only fills small holes
# in video masks, and sam2 skips that step without it).
COPY --chown=1000 requirements.txt ./
RUN PY="${DL_PYTHON_EXECUTABLE:-python3}" \
    && { grep -iE '^(torch|torchvision)[[:space:]]*[=<>~!]' requirements.txt > /tmp/torch-requirements.txt || true; } \
    && if [ -s /tmp/torch-requirements.txt ]; then \
           "$PY" -m pip install --user ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} -r /tmp/torch-requirements.txt; \
       fi \
    && SAM2_BUILD_CUDA=0 "$PY" -m pip install --user --no-build-isolation -r requirements.txt \
    && rm /tmp/torch-requirements.txt

# The package (dataloop.json's entryPoint is model_adapter.py, relative to the working dir).
COPY --chown=1000 model_adapter.py ./
COPY --chown=1000 sam2_adapter/ ./sam2_adapter/
COPY --chown=1000 assets/ ./assets/

# Fail the build, not the first execution, when the image is wrong: the pinned torch must be the one imported,
# and the adapter must import. dtlpy writes state on import, so it gets a throwaway HOME/DATALOOP_PATH here
# (PYTHONUSERBASE keeps the --user installs above in sight: Python finds them through HOME otherwise).
RUN PY="${DL_PYTHON_EXECUTABLE:-python3}" \
    && PYTHONUSERBASE=/tmp/.local HOME=/tmp/build-check DATALOOP_PATH=/tmp/build-check/.dataloop "$PY" -c "\
import re, torch, sam2, model_adapter; \
pin = re.search(r'^torch\s*==\s*([^\s;#]+)', open('requirements.txt').read(), re.M); \
got = torch.__version__.split('+')[0]; \
assert pin is None or got == pin.group(1), f'imported torch {torch.__version__}, requirements.txt pins {pin.group(1)}'; \
print('torch', torch.__version__, 'cuda', torch.version.cuda, '| sam2', sam2.__file__)" \
    && rm -rf /tmp/build-check

# Bake the checkpoint into SAM2_ADAPTER_CACHE (sam2_adapter.models.DEFAULT_CACHE_DIR), where load() looks after
# the model's artifacts. An unknown name fails the build with the list of known ones.
RUN if [ -n "$CHECKPOINT" ]; then \
        "${DL_PYTHON_EXECUTABLE:-python3}" -c "import os; from sam2_adapter.models import resolve_checkpoint, spec_for; print(resolve_checkpoint(spec_for(os.environ['CHECKPOINT'])))"; \
    fi

# No CMD/ENTRYPOINT: the platform starts the Dataloop agent in its runner images.
