"""Removing a profile's older images (never the current tag, never one a container uses)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from orchestrator.errors import ImageError
from orchestrator.images.containers import Runner, docker_argv
from orchestrator.images.spec import ImageSpec

if TYPE_CHECKING:
    import docker

BUILDER_FILTER = {"dangling": True, "label": "orchestrator.stage=builder"}


def prune_build_host(
    api: docker.APIClient, spec: ImageSpec, builder_cache: bool = False, dry_run: bool = False
) -> tuple[list[str], list[str]]:
    """(removed, kept because in use) among `spec.repository`'s tags on the build host."""
    import docker

    removed: list[str] = []
    kept: list[str] = []
    old = sorted(
        tag
        for image in api.images(name=spec.repository)
        for tag in image.get("RepoTags") or []
        if tag != spec.tag
    )
    for tag in old:
        if dry_run:
            removed.append(tag)
            continue
        try:
            api.remove_image(tag)
            removed.append(tag)
        except docker.errors.APIError as exc:
            if exc.status_code == 409:  # used by a container
                kept.append(tag)
            else:
                raise ImageError(
                    f"cannot remove {tag} on the build host: {exc.explanation or exc}"
                ) from exc
    if builder_cache:
        stages = api.images(filters=BUILDER_FILTER, quiet=True)
        if dry_run:
            removed += [f"builder stage {s[7:19]}" for s in stages]
        else:
            pruned = api.prune_images(filters=BUILDER_FILTER)
            removed += [
                f"builder stage {d.get('Deleted', '')[7:19]}"
                for d in pruned.get("ImagesDeleted") or []
                if d.get("Deleted")
            ]
    return removed, kept


def prune_node(
    runner: Runner, docker_host: str | None, spec: ImageSpec, dry_run: bool = False
) -> tuple[list[str], list[str]]:
    """(removed, kept because in use) among `spec.repository`'s tags on one node."""
    docker = docker_argv(docker_host)
    listing = runner.run(
        docker + ["image", "ls", "--format", "{{.Repository}}:{{.Tag}}", spec.repository],
        timeout=60,
        check=False,
    )
    if listing.exit_code != 0:
        raise ImageError(f"docker image ls failed: {listing.stderr.strip()[-300:]}")
    old = sorted(
        {t for t in listing.stdout.split() if t and t != spec.tag and not t.endswith(":<none>")}
    )
    removed: list[str] = []
    kept: list[str] = []
    for tag in old:
        if dry_run:
            removed.append(tag)
            continue
        result = runner.run(docker + ["rmi", tag], timeout=300, check=False)
        if result.exit_code == 0:
            removed.append(tag)
        elif "conflict" in result.stderr or "being used" in result.stderr:
            kept.append(tag)
        else:
            raise ImageError(f"docker rmi {tag} failed: {result.stderr.strip()[-300:]}")
    return removed, kept
