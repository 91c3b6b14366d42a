# The image every pod of the cluster runs (Ray head, GPU workers, the RayJob submitter, the eval, shard and
# TensorBoard pods). Build from the repository root and push where the cluster can pull from:
#   docker build -t ghcr.io/flowergan/flowergan:0.1.0 .
#   docker push ghcr.io/flowergan/flowergan:0.1.0
# The tag is the package version (pyproject.toml); k8s/kustomization.yaml maps it to your registry.
#
# Base: PyTorch's CUDA *runtime* image (CUDA 12.9 libraries and cuDNN 9, no compilers), pinned by tag.
# Ray is pinned to the version the manifests declare as `rayVersion` (tests check that they agree).
FROM pytorch/pytorch:2.8.0-cuda12.9-cudnn9-runtime

ARG RAY_VERSION=2.60.0
# torch-fidelity's port of the TF Inception (2015-12-05) that FID is defined with; the sha256 is checked.
ARG INCEPTION_URL=https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth
ARG INCEPTION_SHA256=6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2

LABEL org.opencontainers.image.title="flowergan" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.description="DCGAN flower generation: training (Ray Train) and evaluation" \
      org.opencontainers.image.licenses="Apache-2.0" \
      io.ray.version="${RAY_VERSION}"

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    FLOWERGAN_INCEPTION_WEIGHTS=/opt/flowergan/weights/weights-inception-2015-12-05-6726825d.pth

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# wget: KubeRay's liveness/readiness probes call it inside the Ray containers.
# Ubuntu's archive drops superseded package versions, so apt pins would break rebuilds; the base tag pins the
# distribution instead.
# KubeRay starts Ray with `bash -lc`: keep conda's Python first on PATH in login shells too (the single quotes
# are deliberate: $PATH expands when the shell starts, not now).
# hadolint ignore=DL3008,SC2016
RUN apt-get update \
 && apt-get install -y --no-install-recommends wget ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && echo 'export PATH=/opt/conda/bin:$PATH' > /etc/profile.d/00-conda-path.sh

# Ray first: the heaviest dependency gets its own cached layer. [default] brings the dashboard and job
# server that `ray job submit` (the RayJob submitter) talks to.
RUN pip install "ray[default,train]==${RAY_VERSION}"

# FID Inception weights at a fixed path ($FLOWERGAN_INCEPTION_WEIGHTS), verified before use.
RUN mkdir -p "$(dirname "${FLOWERGAN_INCEPTION_WEIGHTS}")" \
 && wget -q -O "${FLOWERGAN_INCEPTION_WEIGHTS}" "${INCEPTION_URL}" \
 && echo "${INCEPTION_SHA256}  ${FLOWERGAN_INCEPTION_WEIGHTS}" | sha256sum --check --strict - \
 && chmod 0444 "${FLOWERGAN_INCEPTION_WEIGHTS}"

# The project's other runtime dependencies, pinned to the versions its test suite runs with; torch and
# torchvision come from the base image (pyproject.toml only asks for torch>=2.4, torchvision>=0.19).
RUN pip install \
      webdataset==1.0.2 torchmetrics==1.9.0 torch-fidelity==0.4.0 tensorboard==2.21.0 safetensors==0.8.0 \
      typer==0.29.2 rich==15.0.0 matplotlib==3.11.2 fsspec==2026.9.0 scipy==1.17.1 pillow==13.0.0

# The project itself (training package, eval package, job files), without touching the pins above.
WORKDIR /app
COPY pyproject.toml README.md ./
COPY flowergan ./flowergan
COPY eval ./eval
COPY jobs ./jobs
RUN pip install --no-deps . \
 && flowergan --help >/dev/null \
 && flowergan-eval --help >/dev/null \
 && python -c "import ray, sys; sys.exit(ray.__version__ != '${RAY_VERSION}')"

# Non-root: the manifests run as uid 1000 with no privilege escalation.
RUN groupadd --gid 1000 flowergan \
 && useradd --uid 1000 --gid 1000 --create-home --shell /bin/bash flowergan \
 && mkdir -p /data \
 && chown flowergan:flowergan /data
USER 1000:1000
ENV HOME=/home/flowergan

CMD ["flowergan", "--help"]
