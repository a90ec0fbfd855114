"""`orchestrator image ...`: build from vendor wheels, see where it is, put it on nodes, prune."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import click

from orchestrator.errors import ImageError, StoreError
from orchestrator.states import DISTRIBUTIONS, Distribution

if TYPE_CHECKING:
    from rich.console import Console

    from orchestrator.cli.context import AppContext
    from orchestrator.image_settings import ImageSettings
    from orchestrator.images.distribute import DistributionReport
    from orchestrator.specs import ClusterSpec, NodeSpec


def _console(stderr: bool = True) -> Console:
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


def _settings(
    app: AppContext,
    vendor: str | None,
    wheels: Sequence[str],
    base: str | None,
    build_host: str | None,
) -> ImageSettings:
    from orchestrator.images.workflow import settings_for

    return settings_for(
        app.cluster, vendor=vendor, wheels=tuple(wheels), base_image=base, build_host=build_host
    )


def _nodes(cluster: ClusterSpec, names: str | None) -> tuple[NodeSpec, ...]:
    if not names:
        return cluster.nodes
    return tuple(cluster.node(n.strip()) for n in names.split(",") if n.strip())


_vendor_opt = click.option(
    "--vendor", help="Vendor profile (images/<vendor>/); default: the cluster's vendor."
)
_wheels_opt = click.option(
    "--wheels",
    multiple=True,
    type=click.Path(exists=True),
    help="A wheel file or a directory of wheels (repeatable); default: the profile's wheel_dir.",
)
_base_opt = click.option("--base", help="Base image reference; default: the profile's.")
_build_host_opt = click.option(
    "--build-host", help="'local' (this machine's Docker daemon) or a node name; default: local."
)
_nodes_opt = click.option(
    "--nodes", help="Comma-separated node names; default: every node of the cluster."
)


@click.group("image")
def image_group() -> None:
    """Images built from the vendor's PyTorch wheels, tagged by content, put on the nodes."""


@image_group.command("build")
@_vendor_opt
@_wheels_opt
@_base_opt
@_build_host_opt
@click.option("--dry-run", is_flag=True, help="Show the Dockerfile and the tag; build nothing.")
@click.option("--rebuild", is_flag=True, help="Build again without the daemon's cache.")
@click.option("-v", "--verbose", is_flag=True, help="Show every line of the build's output.")
@click.pass_obj
def build_cmd(
    app: AppContext,
    vendor: str | None,
    wheels: tuple[str, ...],
    base: str | None,
    build_host: str | None,
    dry_run: bool,
    rebuild: bool,
    verbose: bool,
) -> None:
    """Build the image of a vendor profile on the build host, unless it is there already.

    Example: orchestrator image build --vendor metax-c500 --wheels /opt/wheels/metax
    """
    from orchestrator.images.build import ImageBuildError, build_image
    from orchestrator.images.progress_ui import build_progress
    from orchestrator.images.records import record_for
    from orchestrator.images.workflow import build_host_api, image_spec, record_in_store

    settings = _settings(app, vendor, wheels, base, build_host)
    err = _console()
    if dry_run:
        _dry_run(app, settings)
        return
    with build_host_api(app.cluster, settings) as api:
        started = time.monotonic()
        spec = image_spec(app.cluster, settings, api)
        err.print(
            f"image {spec.tag}: {len(spec.wheels)} wheel(s), tag computed in {time.monotonic() - started:.1f}s"
        )
        try:
            with build_progress(err, verbose) as observer:
                built = build_image(spec, api, observer=observer, rebuild=rebuild)
        except ImageBuildError as exc:
            err.print("\n".join(exc.log_tail))
            raise
    if built.reused:
        err.print(
            f"{spec.tag} is already on the build host ({built.image_id[:19]}): nothing to build"
        )
    else:
        err.print(
            f"built {spec.tag} in {built.build_seconds:.0f}s, {built.size_bytes / 1e9:.2f} GB; log {built.log_path}"
        )
    record = record_for(spec, built)
    try:
        record_in_store(app.open_store(), record)
    except StoreError as exc:
        raise StoreError(
            f"image {spec.tag} is built but not recorded: {exc.message}",
            (exc.remedy or "fix the store")
            + "; then run `orchestrator image build` again to record it",
        ) from exc
    click.echo(spec.tag)


def _dry_run(app: AppContext, settings: ImageSettings) -> None:
    from orchestrator.images.workflow import build_host_api, image_spec

    note = ""
    started = time.monotonic()
    try:
        with build_host_api(app.cluster, settings) as api:
            spec = image_spec(app.cluster, settings, api)
    except ImageError as exc:
        # Without the build host the tag cannot include the base image's id: say so.
        spec = image_spec(app.cluster, settings, None)
        note = f" (base image id unknown: {exc.message})"
    else:
        if spec.base_id is None:
            note = (
                f" (base image {spec.base_image} is not on the build host: load it before building)"
            )
    seconds = time.monotonic() - started
    click.echo(f"# profile {spec.profile.name}: {spec.profile.description}")
    click.echo(f"# build host: {settings.build_host}")
    click.echo(f"# base: {spec.base_image} {spec.base_id or 'unresolved'}")
    for wheel in spec.wheels:
        click.echo(f"# wheel {wheel.name} sha256 {wheel.sha256}")
    click.echo(
        f"# workload: {len(spec.workload)} file(s); build context {spec.context_bytes / 1e6:.1f} MB"
    )
    click.echo(spec.dockerfile, nl=False)
    click.echo(f"# tag computed in {seconds:.2f}s")
    click.echo(f"tag: {spec.tag}{note}")


@image_group.command("ls")
@_vendor_opt
@_wheels_opt
@_base_opt
@_build_host_opt
@_nodes_opt
@click.pass_obj
def ls_cmd(
    app: AppContext,
    vendor: str | None,
    wheels: tuple[str, ...],
    base: str | None,
    build_host: str | None,
    nodes: str | None,
) -> None:
    """Where the current image is: the build host and every node, present or not.

    Example: orchestrator image ls --nodes c500-01,c500-02
    """
    from orchestrator.images.build import image_id
    from orchestrator.images.distribute import check_presence
    from orchestrator.images.workflow import build_host_api, image_spec, targets
    from orchestrator.transport import NodeSession

    settings = _settings(app, vendor, wheels, base, build_host)
    chosen = _nodes(app.cluster, nodes)
    with NodeSession(chosen, app.cluster.ssh) as session:
        with build_host_api(app.cluster, settings, session.transports) as api:
            spec = image_spec(app.cluster, settings, api)
            built = image_id(api, spec.tag)
        presence = check_presence(targets(chosen, session.transports), spec.tag)
    click.echo(f"image {spec.tag}")
    click.echo(f"  {'build host (' + settings.build_host + ')':<24} {_state(built, built)}")
    for node in chosen:
        found = presence[node.name]
        click.echo(
            f"  {node.name:<24} {_state(found.image_id, built)}  ({found.seconds * 1000:.0f} ms)"
        )


def _state(found: str | None, expected: str | None) -> str:
    if found is None:
        return "missing"
    if expected is not None and found != expected:
        return f"DIFFERENT {found[:19]}"
    return f"present {found[:19]}"


@image_group.command("push-to-nodes")
@_vendor_opt
@_wheels_opt
@_base_opt
@_build_host_opt
@_nodes_opt
@click.option(
    "--registry", help="Push to this registry and pull on the nodes instead of streaming."
)
@click.option(
    "--distribution",
    type=click.Choice(DISTRIBUTIONS),
    help="relay: the build host sends each missing layer once and the nodes pass it on; "
    "star: one stream from the build host to every node. Default: the [image] table's, else relay.",
)
@click.pass_obj
def push_cmd(
    app: AppContext,
    vendor: str | None,
    wheels: tuple[str, ...],
    base: str | None,
    build_host: str | None,
    nodes: str | None,
    registry: str | None,
    distribution: Distribution | None,
) -> None:
    """Put the built image on every node that lacks it: only the layers a node lacks, relayed
    from node to node (or --distribution star: docker save | docker load from the build host).

    Example: orchestrator image push-to-nodes --nodes c500-01,c500-02
    """
    from orchestrator.images.distribute import distribute
    from orchestrator.images.progress_ui import transfer_progress
    from orchestrator.images.workflow import build_host_api, image_spec, targets
    from orchestrator.transport import NodeSession

    settings = _settings(app, vendor, wheels, base, build_host)
    chosen = _nodes(app.cluster, nodes)
    err = _console()
    with NodeSession(chosen, app.cluster.ssh) as session:
        with build_host_api(app.cluster, settings, session.transports) as api:
            spec = image_spec(app.cluster, settings, api)
            with transfer_progress(err) as progress:
                report = distribute(
                    api,
                    spec.tag,
                    targets(chosen, session.transports),
                    progress=progress,
                    registry=registry or settings.registry,
                    strategy=distribution or settings.distribution,
                )
    for node in chosen:
        moved = report.transfers.get(node.name)
        if moved is None:
            err.print(f"{node.name}: already had {spec.tag}")
        else:
            err.print(
                f"{node.name}: received {moved.bytes_sent / 1e6:.0f} MB in {moved.seconds:.1f}s "
                f"({moved.mb_per_s:.0f} MB/s)"
            )
    for incident in report.incidents:
        err.print(f"recovered: {incident}", markup=False)
    if report.transfers:
        err.print(_summary(report), markup=False)


def _summary(report: DistributionReport) -> str:
    """How the image travelled: the build host's bytes against what the nodes received."""
    if report.method == "relay":
        return (
            f"by relay: {len(report.layers)} layer(s) and the config, "
            f"{report.payload_bytes / 1e6:.1f} MB; the build host sent "
            f"{report.source_bytes / 1e6:.1f} MB for {len(report.transfers)} node(s)"
        )
    return (
        f"by {'star' if report.method == 'stream' else report.method}: the build host sent "
        f"{report.source_bytes / 1e6:.1f} MB for {len(report.transfers)} node(s)"
    )


@image_group.command("prune")
@_vendor_opt
@_wheels_opt
@_base_opt
@_build_host_opt
@_nodes_opt
@click.option(
    "--builder-cache", is_flag=True, help="Also drop the build host's cached wheel-install stages."
)
@click.option("--dry-run", is_flag=True, help="Only list what would be removed.")
@click.pass_obj
def prune_cmd(
    app: AppContext,
    vendor: str | None,
    wheels: tuple[str, ...],
    base: str | None,
    build_host: str | None,
    nodes: str | None,
    builder_cache: bool,
    dry_run: bool,
) -> None:
    """Remove this profile's older images from the build host and the nodes; keep the current one.

    Images still used by a container are kept. Example: orchestrator image prune --dry-run
    """
    from orchestrator.images.prune import prune_build_host, prune_node
    from orchestrator.images.workflow import build_host_api, image_spec
    from orchestrator.transport import NodeSession

    settings = _settings(app, vendor, wheels, base, build_host)
    chosen = _nodes(app.cluster, nodes)
    with NodeSession(chosen, app.cluster.ssh) as session:
        with build_host_api(app.cluster, settings, session.transports) as api:
            spec = image_spec(app.cluster, settings, api)
            results: dict[str, Any] = {
                "build host": prune_build_host(api, spec, builder_cache, dry_run)
            }
        node_results = session.fan_out(
            lambda t: prune_node(t, app.cluster.node(t.name).docker_host, spec, dry_run),
            timeout=600,
            what="pruning images",
        )
        results.update(node_results)
    verb = "would remove" if dry_run else "removed"
    for where, outcome in results.items():
        removed, kept = outcome
        click.echo(
            f"{where}: {verb} {', '.join(removed) or 'nothing'}"
            + (f"; kept (in use) {', '.join(kept)}" if kept else "")
        )


def register(cli: click.Group) -> None:
    cli.add_command(image_group)
