"""What a vendor's base image may lack and the workload needs, added by the image's first stage.

Vendors ship CUDA runtime images without `python3` (nvidia/cuda:*-runtime-*) and without the
InfiniBand user libraries; without those NCCL falls back to TCP sockets without a word. The
image's `system` stage therefore runs one shell step inside the base image that:

- checks that the profile's Python can make a venv (`python -m venv`, which needs ensurepip);
- for a profile that uses InfiniBand, checks that libibverbs and the mlx5 provider are there;
- installs only what is missing, with the package manager the base image has (apt-get, dnf,
  microdnf or yum), and fails in one line naming what is missing when it has none.

A base image that already has everything (a vendor image with Python and rdma-core) needs no
package manager and no network. Pure: this renders text; the build runs it.
"""

from __future__ import annotations

import shlex

# Debian/Ubuntu and RHEL-family names. On EL, libibverbs carries the providers (libmlx5).
APT_PYTHON = ("python3", "python3-venv")
APT_INFINIBAND = ("libibverbs1", "ibverbs-providers", "librdmacm1")
RPM_PYTHON = ("python3",)
RPM_INFINIBAND = ("libibverbs", "librdmacm")
# What `ldconfig -p` must list for NCCL's IB transport: verbs, and the mlx5 provider's library.
INFINIBAND_LIBRARIES = ("libibverbs.so.1", "libmlx5.so.1")
PROBE_VENV = "/tmp/orchestrator-venv-probe"


def system_setup_script(python: str, infiniband: bool) -> str:
    """The shell step of the `system` stage, as Dockerfile text after `RUN ` (lines joined by
    backslashes; the legacy builder has no heredocs)."""
    py = shlex.quote(python)
    ib_check = " && ".join(
        f"ldconfig -p | grep -q {shlex.quote(_ldconfig_pattern(lib))}"
        for lib in INFINIBAND_LIBRARIES
    )
    apt = (
        "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "
        "--no-install-recommends $apt_pkgs >/dev/null && rm -rf /var/lib/apt/lists/*"
    )
    lines = [
        "set -e; need=''; apt_pkgs=''; rpm_pkgs=''",
        f'if ! {py} -m venv {PROBE_VENV} >/dev/null 2>&1; then need="$need python-with-venv";'
        f' apt_pkgs="$apt_pkgs {" ".join(APT_PYTHON)}"; rpm_pkgs="$rpm_pkgs {" ".join(RPM_PYTHON)}"; fi',
        f"rm -rf {PROBE_VENV}",
    ]
    if infiniband:
        lines.append(
            f'if ! {{ {ib_check}; }}; then need="$need infiniband-libraries";'
            f' apt_pkgs="$apt_pkgs {" ".join(APT_INFINIBAND)}";'
            f' rpm_pkgs="$rpm_pkgs {" ".join(RPM_INFINIBAND)}"; fi'
        )
    lines += [
        'if [ -z "$need" ]; then echo "base image has all the workload needs"; exit 0; fi',
        'echo "base image lacks:$need; installing"',
        f"if command -v apt-get >/dev/null; then {apt};"
        " elif command -v dnf >/dev/null; then dnf install -y -q $rpm_pkgs && dnf clean all;"
        " elif command -v microdnf >/dev/null; then microdnf install -y $rpm_pkgs"
        " && microdnf clean all;"
        " elif command -v yum >/dev/null; then yum install -y -q $rpm_pkgs && yum clean all;"
        ' else echo "error: the base image lacks$need and has no apt-get, dnf or yum to install'
        ' it: use a base image that has them" >&2; exit 1; fi',
        f'if ! {py} -m venv {PROBE_VENV} >/dev/null; then echo "error: {_squote(python)} cannot'
        " make a venv after installing python3: set [image] python to the base image's"
        ' Python" >&2; exit 1; fi',
        f"rm -rf {PROBE_VENV}",
    ]
    if infiniband:
        lines.append(
            f'if ! {{ {ib_check}; }}; then echo "error: libibverbs or the mlx5 provider is still'
            ' missing after the install" >&2; exit 1; fi'
        )
    return " \\\n ; ".join(lines)


def _ldconfig_pattern(library: str) -> str:
    # `ldconfig -p` lines read "\tlibibverbs.so.1 (libc6,x86-64) => /lib/...".
    return library.replace(".", r"\.") + " "


def _squote(text: str) -> str:
    """Text for inside a double-quoted shell string (the message), without expansions."""
    return "".join(c for c in text if c not in '"$`\\')
