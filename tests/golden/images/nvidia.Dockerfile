# Rendered by orchestrator from images/Dockerfile.template for the nvidia profile; do not edit.
# Stage "system" adds what the base image lacks and the workload needs (a Python that makes a
# venv; the InfiniBand user libraries for a profile that uses IB), installing only what is
# missing. Stage "builder" installs the wheels into a venv; the final stage copies only the venv,
# so no wheel layer is left in the image that nodes receive.
FROM nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04 AS system
RUN set -e; need=''; apt_pkgs=''; rpm_pkgs='' \
 ; if ! /usr/bin/python3 -m venv /tmp/orchestrator-venv-probe >/dev/null 2>&1; then need="$need python-with-venv"; apt_pkgs="$apt_pkgs python3 python3-venv"; rpm_pkgs="$rpm_pkgs python3"; fi \
 ; rm -rf /tmp/orchestrator-venv-probe \
 ; if ! { ldconfig -p | grep -q 'libibverbs\.so\.1 ' && ldconfig -p | grep -q 'libmlx5\.so\.1 '; }; then need="$need infiniband-libraries"; apt_pkgs="$apt_pkgs libibverbs1 ibverbs-providers librdmacm1"; rpm_pkgs="$rpm_pkgs libibverbs librdmacm"; fi \
 ; if [ -z "$need" ]; then echo "base image has all the workload needs"; exit 0; fi \
 ; echo "base image lacks:$need; installing" \
 ; if command -v apt-get >/dev/null; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $apt_pkgs >/dev/null && rm -rf /var/lib/apt/lists/*; elif command -v dnf >/dev/null; then dnf install -y -q $rpm_pkgs && dnf clean all; elif command -v microdnf >/dev/null; then microdnf install -y $rpm_pkgs && microdnf clean all; elif command -v yum >/dev/null; then yum install -y -q $rpm_pkgs && yum clean all; else echo "error: the base image lacks$need and has no apt-get, dnf or yum to install it: use a base image that has them" >&2; exit 1; fi \
 ; if ! /usr/bin/python3 -m venv /tmp/orchestrator-venv-probe >/dev/null; then echo "error: /usr/bin/python3 cannot make a venv after installing python3: set [image] python to the base image's Python" >&2; exit 1; fi \
 ; rm -rf /tmp/orchestrator-venv-probe \
 ; if ! { ldconfig -p | grep -q 'libibverbs\.so\.1 ' && ldconfig -p | grep -q 'libmlx5\.so\.1 '; }; then echo "error: libibverbs or the mlx5 provider is still missing after the install" >&2; exit 1; fi

FROM system AS builder
LABEL orchestrator.stage=builder
COPY wheels/ /wheels/
RUN /usr/bin/python3 -m venv /opt/venv \
 && /opt/venv/bin/python -m pip install --no-index --no-cache-dir --disable-pip-version-check \
      --find-links /wheels torch torchvision pycocotools

FROM system
COPY --from=builder /opt/venv /opt/venv
COPY workload/ /opt/orchestrator/workload/
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/opt/orchestrator \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
WORKDIR /opt/orchestrator
