# syntax=docker/dockerfile:1
# Two images from one file:
#   docker build --target train -t fashionflow-train:0.1.0 .   # AWS Batch image for the flow's train step (CUDA)
#   docker build --target serve -t fashionflow-serve:0.1.0 .   # the prediction service (CPU, non-root)
#
# The train image carries the project's dependencies and an installed `fmnist`, but a Batch task imports the
# `fmnist` shipped in Metaflow's code package (it sits next to the flow file, first on sys.path), so the image
# only has to be rebuilt when dependencies change, not for every code change.

ARG TRAIN_BASE=pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime
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
COPY pyproject.toml README.md ./
COPY fmnist/ fmnist/
COPY serving/ serving/
# torch and torchvision come with the base image (CUDA builds); pip keeps them, as they satisfy pyproject.toml.
RUN pip install . \
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
COPY pyproject.toml README.md ./
COPY fmnist/ fmnist/
COPY serving/ serving/
# CPU-only torch wheels first (a fraction of the CUDA wheels' size), then the project with its serving extra.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch torchvision \
    && pip install ".[serve]"

USER app
WORKDIR /home/app
EXPOSE 8000
# /health answers as soon as the process is up; /ready only once the model is loaded and warm.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/ready', timeout=4)"
CMD ["uvicorn", "serving.app:app", "--host", "0.0.0.0", "--port", "8000"]
