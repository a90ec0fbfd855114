# Rendered by orchestrator from images/Dockerfile.template for the metax-c500 profile; do not edit.
# Stage 1 installs the wheels into a venv; the final stage copies only the venv, so no wheel
# layer is left in the image that nodes receive.
FROM metax/c500-pytorch-base:2.19.0.6-ubuntu20.04 AS builder
LABEL orchestrator.stage=builder
COPY wheels/ /wheels/
RUN /usr/bin/python3.8 -m venv --system-site-packages /opt/venv \
 && /opt/venv/bin/python -m pip install --no-index --no-cache-dir --disable-pip-version-check \
      --find-links /wheels torch torchvision pycocotools

FROM metax/c500-pytorch-base:2.19.0.6-ubuntu20.04
COPY --from=builder /opt/venv /opt/venv
COPY workload/ /opt/orchestrator/workload/
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/opt/orchestrator \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
WORKDIR /opt/orchestrator
