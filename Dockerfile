# wmhseg on the official PyTorch CUDA runtime image. Build and run:
#   docker build -t wmhseg .
#   docker run --gpus all -v "$PWD":/data wmhseg predict FLAIR.nii.gz --out predictions
# The base image brings torch 2.5.1 with CUDA 12.4 and Python 3.11; the package needs torch>=2.1,
# so pip keeps the image's CUDA build instead of pulling another torch.
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MPLCONFIGDIR=/tmp/matplotlib

WORKDIR /opt/wmhseg
COPY pyproject.toml README.md LICENSE ./
COPY wmhseg ./wmhseg

# Same install as the local set-up: the project itself, with numpy below 2.4 (antspyx needs it).
RUN pip install --no-cache-dir "numpy<2.4" . \
    && wmhseg --version

# Run as an unprivileged user. Files written under /data belong to uid 10001; pass
# --user "$(id -u):$(id -g)" to docker run to give them the host user's id instead.
RUN useradd --no-log-init --create-home --uid 10001 --user-group --shell /usr/sbin/nologin wmhseg
USER 10001:10001

WORKDIR /data
ENTRYPOINT ["wmhseg"]
CMD ["--help"]
