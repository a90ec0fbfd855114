# Rendered by orchestrator from images/Dockerfile.template for the cpu profile; do not edit.
# Stage 1 installs the wheels into a venv; the final stage copies only the venv, so no wheel
# layer is left in the image that nodes receive.
FROM orchestrator/base-bookworm:fa5a0faac67af1aa AS builder
LABEL orchestrator.stage=builder
COPY wheels/ /wheels/
RUN /usr/bin/python3 -m venv /opt/venv \
 && /opt/venv/bin/python -m pip install --no-index --no-cache-dir --disable-pip-version-check \
      --find-links /wheels torch torchvision pycocotools

FROM orchestrator/base-bookworm:fa5a0faac67af1aa
COPY --from=builder /opt/venv /opt/venv
COPY workload/ /opt/orchestrator/workload/
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/opt/orchestrator \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
WORKDIR /opt/orchestrator
