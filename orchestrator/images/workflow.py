"""The image steps that `submit` and `orchestrator image ...` share:

    spec    = image_spec(cluster, settings, api)          # hash inputs, render, tag
    built   = build_image(spec, api, observer=...)        # or reuse what the build host has
    report  = distribute(api, spec.tag, targets(...))     # only to nodes that lack it

`ensure_image` does all three and records the image in the store.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from orchestrator.image_settings import LOCAL, ImageSettings
from orchestrator.images.build import BuildObserver, BuiltImage, build_image, image_id, open_api
from orchestrator.images.distribute import DistributionReport, NodeTarget, ProgressFn, distribute
from orchestrator.images.profiles import VendorProfile, load_profile
from orchestrator.images.records import record_for
from orchestrator.images.spec import ImageSpec, Sha256Cache, default_cache_path, make_image_spec
from orchestrator.states import Distribution

if TYPE_CHECKING:
    import docker

    from orchestrator.specs import ClusterSpec, NodeSpec
    from orchestrator.store import Store
    from orchestrator.transport import Transport


def settings_for(
    cluster: ClusterSpec,
    *,
    vendor: str | None = None,
    wheels: Sequence[str] = (),
    base_image: str | None = None,
    build_host: str | None = None,
    registry: str | None = None,
    distribution: Distribution | None = None,
) -> ImageSettings:
    """The cluster file's [image] settings (defaults without one), with the options given
    on the command line (None or no wheels: the file's value stands)."""
    settings = cluster.image or ImageSettings()
    return replace(
        settings,
        vendor=settings.vendor if vendor is None else vendor,
        wheels=tuple(wheels) if wheels else settings.wheels,
        base_image=settings.base_image if base_image is None else base_image,
        build_host=settings.build_host if build_host is None else build_host,
        registry=settings.registry if registry is None else registry,
        distribution=settings.distribution if distribution is None else distribution,
    )


def profile_for(cluster: ClusterSpec, settings: ImageSettings) -> VendorProfile:
    return load_profile(settings.vendor or cluster.vendor)


@contextmanager
def build_host_api(
    cluster: ClusterSpec, settings: ImageSettings, transports: Mapping[str, Transport] | None = None
) -> Iterator[docker.APIClient]:
    """A docker client for the build host: this machine's daemon, or a node's over SSH."""
    if settings.build_host == LOCAL:
        api = open_api()
        own_transport = None
    else:
        node = cluster.node(settings.build_host)
        if node.is_local:
            api, own_transport = open_api(node.docker_host), None
        else:
            from orchestrator.images.remote_api import open_api_over_ssh

            transport = (transports or {}).get(node.name)
            own_transport = None
            if transport is None:
                from orchestrator.transport import connect

                transport = own_transport = connect(node, cluster.ssh)
            api = open_api_over_ssh(transport, node.docker_host)
    try:
        yield api
    finally:
        api.close()
        if own_transport is not None:
            own_transport.close()


def image_spec(
    cluster: ClusterSpec,
    settings: ImageSettings,
    api: docker.APIClient | None,
    cache: Sha256Cache | None = None,
) -> ImageSpec:
    """The spec with the base image's id from the build host (unresolved without `api`)."""
    profile = profile_for(cluster, settings)
    base = settings.base_image or profile.base_image
    base_id = image_id(api, base) if api is not None else None
    return make_image_spec(
        profile,
        list(settings.wheels) or None,
        base_id,
        base_image=base,
        cache=cache if cache is not None else Sha256Cache(default_cache_path()),
    )


def targets(nodes: Sequence[NodeSpec], transports: Mapping[str, Transport]) -> list[NodeTarget]:
    """Each node's daemon, reached through its transport; for a relay, other nodes reach it at
    its address in the cluster file (the local node at 127.0.0.1)."""
    return [
        NodeTarget(
            n.name,
            transports[n.name],
            n.docker_host,
            relay_address="127.0.0.1" if n.is_local else n.address,
        )
        for n in nodes
    ]


@dataclass
class PreparedImage:
    spec: ImageSpec
    built: BuiltImage
    distribution: DistributionReport | None
    record: dict[str, Any] = field(default_factory=dict)

    @property
    def tag(self) -> str:
        return self.spec.tag


def record_in_store(store: Store, record: dict[str, Any]) -> None:
    """store.record_image(record); idempotent by image id, so a reused image is recorded too."""
    store.record_image(record)


def ensure_image(
    cluster: ClusterSpec,
    nodes: Sequence[NodeSpec],
    transports: Mapping[str, Transport],
    settings: ImageSettings | None = None,
    *,
    store: Store | None = None,
    observer: BuildObserver | None = None,
    progress: ProgressFn | None = None,
    rebuild: bool = False,
) -> PreparedImage:
    """Build the image if the build host lacks it, record it, and put it on every node."""
    settings = settings or settings_for(cluster)
    with build_host_api(cluster, settings, transports) as api:
        spec = image_spec(cluster, settings, api)
        built = build_image(spec, api, observer=observer, rebuild=rebuild)
        record = record_for(spec, built)
        if store is not None:
            record_in_store(store, record)
        report = distribute(
            api,
            spec.tag,
            targets(nodes, transports),
            progress=progress,
            registry=settings.registry,
            strategy=settings.distribution,
        )
    return PreparedImage(spec, built, report, record)
