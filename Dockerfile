# syntax=docker/dockerfile:1
# Two images from one file:
#   docker build --target train -t fashionflow-train:0.1.0 .   # the train step's image, Batch or Kubernetes (CUDA)
#   docker build --target serve -t fashionflow-serve:0.1.0 .   # the prediction service (CPU, non-root)
#
# The train image carries the project's dependencies and an installed `fmnist`, but a Batch task imports the
# `fmnist` shipped in Metaflow's code package (it sits next to the flow file, first on sys.path), so the image
# only has to be rebuilt when dependencies change (requirements/lock.txt), not for every code change.
#
# Both install from the lock (see docs/environment.md): the project first, without its
# dependencies, then the dependencies of the extras the image needs with the lock as a constraints file, so every
# package is the locked version and every downloaded file is checked against the lock's sha256 (pip >= 26.1 honours
# hashes in a constraints file). Python 3.11, the lock's.

ARG TRAIN_BASE=python:3.11-slim-bookworm
ARG SERVE_BASE=python:3.11-slim-bookworm

# ---------------------------------------------------------------------------------------------------------------
FROM ${TRAIN_BASE} AS train

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    # Metaflow's Batch bootstrap pip-installs boto3 and requests unless told they are already here (they are).
    METAFLOW_SKIP_INSTALL_DEPENDENCIES=1

WORKDIR /opt/fashionflow
COPY requirements/ requirements/
COPY pyproject.toml README.md ./
COPY fmnist/ fmnist/
COPY serving/ serving/
COPY registry/ registry/
# torch and torchvision are the lock's: PyPI's CUDA build, with the CUDA libraries as locked nvidia-* wheels, the
# same files as the virtual environment's. The host only provides the NVIDIA driver (one recent enough for that
# CUDA release, as the Batch GPU AMIs ship). The locked torch 2.14.1 is built for CUDA 13.0 (`torch.version.cuda`
# prints 13.0), and NVIDIA's compatibility table asks for driver >= 580 for CUDA 13.x: on a Kubernetes GPU node
# (GKE's installed driver, the NVIDIA GPU operator), check `nvidia-smi` in a pod before the first run.
RUN pip install --upgrade "pip>=26.1" \
    && pip install --no-deps . \
    && pip install --constraint requirements/lock.txt "fashionflow[train]" \
    && python -c "import fmnist, metaflow, torch, boto3; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

# Metaflow's Batch command downloads and unpacks the code package into ./metaflow under the working directory.
WORKDIR /workspace

# ---------------------------------------------------------------------------------------------------------------
FROM ${SERVE_BASE} AS serve

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    FASHIONFLOW_HOST=0.0.0.0 \
    FASHIONFLOW_PORT=8000 \
    FASHIONFLOW_DEVICE=cpu

RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --create-home --home-dir /home/app app

WORKDIR /opt/fashionflow
COPY requirements/ requirements/
COPY pyproject.toml README.md ./
COPY fmnist/ fmnist/
COPY serving/ serving/
COPY registry/ registry/
# Only the base set and the `serve` extra: what `serving/` and the released-model path import (no torchvision, no
# training or evaluation stack). The one exception to the lock's hashes: torch is the locked release but PyTorch's
# CPU build (X.Y.Z+cpu, a tenth of the CUDA wheel and no nvidia-* libraries), checked against that index's own
# sha256. Its dependencies and everything else come from the lock, hash-checked.
RUN pip install --upgrade "pip>=26.1" \
    && torch=$(sed -n 's/^torch==\([^ ]*\).*/\1/p' requirements/lock.txt) \
    && pip install --no-deps --index-url https://download.pytorch.org/whl/cpu "torch==${torch}" \
    && pip install --no-deps . \
    && pip install --constraint requirements/lock.txt "fashionflow[serve]" \
    && python -c "import serving.app, torch; print('torch', torch.__version__)"

USER app
WORKDIR /home/app
EXPOSE 8000
# /health answers as soon as the process is up; /ready only once the model is loaded and warm.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/ready', timeout=4)"
# fmnist-serve, not bare uvicorn: it applies the service's connection bounds (request-head and body deadlines,
# concurrency, backlog) and exits with one line when there is no run to serve.
CMD ["fmnist-serve", "--host", "0.0.0.0", "--port", "8000"]
