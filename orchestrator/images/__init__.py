"""Images from vendor wheels, distribution without a registry, and the Docker runtime.

- profiles: images/<vendor>/profile.toml -> VendorProfile (pure data)
- spec: wheels + workload + Dockerfile template -> ImageSpec with a content tag
- build: the docker SDK on the build host, live progress, build log
- distribute: which nodes have the image; the relay (default) or the star puts it there
- relay, relay_source, relay_agent, layers: only the layers a node lacks, sent once by the
  build host and passed from node to node (relay_agent.py runs on the nodes)
- targets: what distribution knows of a node (NodeTarget) and its fan-out
- containers: the `docker run` wrapper of a node's command, cleanup by label
- records: the store's image row and a run's environment block
- workflow: the steps `submit` and `orchestrator image ...` share

The docker SDK is imported lazily, inside the functions that talk to a daemon.
"""

from orchestrator.images.containers import (
    CONTAINER_PYTHON,
    LABEL_RUN_ID,
    Mount,
    container_argv,
    container_name,
    find_containers,
    remove_run_containers,
)
from orchestrator.images.profiles import (
    RuntimeOptions,
    VendorProfile,
    available_profiles,
    load_profile,
)
from orchestrator.images.spec import ImageSpec, make_image_spec, render_dockerfile

__all__ = [
    "CONTAINER_PYTHON",
    "LABEL_RUN_ID",
    "ImageSpec",
    "Mount",
    "RuntimeOptions",
    "VendorProfile",
    "available_profiles",
    "container_argv",
    "container_name",
    "find_containers",
    "load_profile",
    "make_image_spec",
    "remove_run_containers",
    "render_dockerfile",
]
