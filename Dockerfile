# The recsys-dist image that every pod in cluster/ runs (`image: IMAGE` / `GPU_IMAGE`).
# It holds Ray 2.60.0 (the version pyproject.toml pins), torch and this project, all
# installed at build time, so a pod installs nothing when it starts: there is no
# runtime_env pip in the manifests.
#
#   docker build -t IMAGE .                                   # CPU torch (the default)
#   docker build -t GPU_IMAGE \
#       --build-arg BASE_IMAGE=rayproject/ray:2.60.0-py311-gpu \
#       --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/<your CUDA> .
#   docker build -t IMAGE --build-arg EXTRAS='[text]' .       # models with model.item_text
#
# tests/test_cluster_configs.py parses this file: the base must be Ray 2.60.0, torch must be
# installed before the project, every pip install must be pinned or this checkout, the user
# must not be root and no secret may be baked in.

ARG BASE_IMAGE=rayproject/ray:2.60.0-py311
FROM ${BASE_IMAGE}

# torch, pinned. The index decides the build: CPU wheels by default, CUDA wheels for a GPU
# image (match the CUDA of BASE_IMAGE).
ARG TORCH_SPEC=torch==2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# Optional extras of the project, e.g. "[text]".
ARG EXTRAS=""

# Ray's images run as `ray` (uid 1000, group `users`, gid 100), who owns its Python; the pods
# ask for the same user (runAsUser: 1000).
USER 1000:100
WORKDIR /home/ray/recsys-dist-src
# Only what `pip install .` needs; .dockerignore keeps everything else (.git, .venv, runs,
# credentials) out of the build context.
COPY --chown=1000:100 pyproject.toml README.md ./
COPY --chown=1000:100 recsys_dist ./recsys_dist

# torch first, from its own index: `pip install .` then keeps it, rather than resolving a
# (multi-GB CUDA) build of its own (README.md, "As a package"). The check fails the build if
# the project's dependencies moved Ray away from the version the cluster runs.
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" "${TORCH_SPEC}" \
    && pip install --no-cache-dir ".${EXTRAS}" \
    && python -c "import ray, torch, recsys_dist; assert ray.__version__ == '2.60.0', ray.__version__" \
    && recsys-dist --version

WORKDIR /home/ray
