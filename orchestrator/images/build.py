"""Building an image with the docker SDK on the build host (the local daemon or a node's).

The build context holds only the Dockerfile, the wheels and the workload source; it is streamed
to the daemon as a tar (never written to disk). The daemon's output goes to a log file and,
line by line, to the caller for live progress. A failing step raises an ImageBuildError that
names the step and carries its log tail.
"""

from __future__ import annotations

import io
import os
import queue
import re
import tarfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from orchestrator.clock import utcnow
from orchestrator.errors import ImageError
from orchestrator.images.spec import HashedFile, ImageSpec, image_labels

if TYPE_CHECKING:
    import docker

CHUNK = 1 << 20
TAIL_LINES = 15


class ImageBuildError(ImageError):
    """A build step failed; `log_tail` holds the last lines of that step's output."""

    def __init__(self, message: str, remedy: str | None, log_tail: list[str], log_path: str | None):
        super().__init__(message, remedy)
        self.log_tail = log_tail
        self.log_path = log_path


@dataclass(frozen=True)
class BuiltImage:
    tag: str
    image_id: str
    size_bytes: int
    build_seconds: float  # 0.0 when the image was already there
    log_path: str | None
    reused: bool  # the tag was already on the build host: nothing was built
    created: str | None = None  # the daemon's creation time of the image (RFC 3339)


@dataclass
class BuildObserver:
    """Callbacks for live progress; all optional."""

    on_line: Callable[[str], None] | None = None  # each line of the daemon's output
    on_step: Callable[[int, int, str], None] | None = None  # step n of m began: instruction
    on_upload: Callable[[int, int], None] | None = None  # context bytes sent, total
    lines: list[str] = field(default_factory=list)


PROXY_VARIABLES = ("http_proxy", "https_proxy", "no_proxy", "ftp_proxy")


def proxy_build_args(environ: Mapping[str, str]) -> dict[str, str]:
    """The build host's proxy settings, for Docker's predefined proxy build arguments."""
    return {
        name: environ[name]
        for variable in PROXY_VARIABLES
        for name in (variable, variable.upper())
        if environ.get(name)
    }


def open_api(docker_host: str | None = None, timeout: float = 600) -> docker.APIClient:
    """A low-level docker client: `docker_host` (unix://, tcp://), else $DOCKER_HOST, else local."""
    import docker

    try:
        if docker_host:
            api = docker.APIClient(base_url=docker_host, version="auto", timeout=int(timeout))
        else:
            kwargs = docker.utils.kwargs_from_env()
            api = docker.APIClient(version="auto", timeout=int(timeout), **kwargs)
        api.ping()
    except Exception as exc:  # docker raises DockerException, requests errors, OSError
        where = docker_host or os.environ.get("DOCKER_HOST") or "the local Docker daemon"
        raise ImageError(
            f"cannot reach {where}: {_short(exc)}",
            "start dockerd (scripts/start-services.sh) or fix the docker_host setting",
        ) from exc
    return api


def image_id(api: docker.APIClient, ref: str) -> str | None:
    """The image id of `ref` on this daemon, or None when it is not there."""
    import docker

    try:
        return str(api.inspect_image(ref)["Id"])
    except docker.errors.ImageNotFound:
        return None
    except docker.errors.APIError as exc:
        raise ImageError(f"docker could not inspect {ref}: {_short(exc)}") from exc


def require_base(api: docker.APIClient, spec_base: str, profile_name: str) -> str:
    base_id = image_id(api, spec_base)
    if base_id is None:
        hint = (
            "make it with scripts/make-base-image.sh"
            if profile_name == "cpu"
            else "load the vendor's base image there first: docker load -i <base image>.tar"
        )
        raise ImageError(
            f"base image {spec_base} is not on the build host (there is no registry)", hint
        )
    return base_id


def context_chunks(
    spec: ImageSpec, on_upload: Callable[[int, int], None] | None = None
) -> Iterator[bytes]:
    """The build context as a tar stream: Dockerfile, wheels/<name>, workload files."""
    total = spec.context_bytes
    chunks: queue.Queue[bytes | BaseException | None] = queue.Queue(maxsize=16)
    stop = threading.Event()

    class _Writer(io.RawIOBase):
        def writable(self) -> bool:
            return True

        def write(self, data: Any) -> int:
            if stop.is_set():
                raise BrokenPipeError("build context no longer wanted")
            chunks.put(bytes(data))
            return len(data)

    def add(tar: tarfile.TarFile, name: str, path: str | None, data: bytes | None = None) -> None:
        info = tarfile.TarInfo(name)
        info.mode, info.mtime, info.uid, info.gid = 0o644, 0, 0, 0
        if data is not None:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
            return
        assert path is not None
        with open(path, "rb") as handle:
            info.size = os.fstat(handle.fileno()).st_size
            tar.addfile(info, handle)

    def produce(wheels: tuple[HashedFile, ...], workload: tuple[HashedFile, ...]) -> None:
        try:
            raw = io.BufferedWriter(_Writer(), buffer_size=CHUNK)
            with tarfile.open(fileobj=raw, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                add(tar, "Dockerfile", None, spec.dockerfile.encode())
                for wheel in wheels:
                    add(tar, f"wheels/{wheel.name}", wheel.path)
                for item in workload:
                    add(tar, item.name, item.path)
            raw.flush()
            chunks.put(None)
        except BaseException as exc:  # handed to the consumer, which raises it
            chunks.put(exc)

    producer = threading.Thread(target=produce, args=(spec.wheels, spec.workload), daemon=True)
    producer.start()
    sent = 0
    try:
        while True:
            item = chunks.get()
            if item is None:
                break
            if isinstance(item, BaseException):
                if isinstance(item, OSError):
                    raise ImageError(
                        f"cannot read a build context file: {item}", "check the wheels"
                    ) from item
                raise item
            sent += len(item)
            if on_upload:
                on_upload(sent, total)
            yield item
    finally:
        stop.set()
        while producer.is_alive():  # unblock a producer waiting on a full queue
            try:
                chunks.get_nowait()
            except queue.Empty:
                producer.join(0.05)


def default_log_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return Path(base) / "orchestrator" / "image-builds"


def build_image(
    spec: ImageSpec,
    api: docker.APIClient,
    *,
    log_dir: Path | None = None,
    observer: BuildObserver | None = None,
    rebuild: bool = False,
    timeout_s: float = 3600,
) -> BuiltImage:
    """Build `spec.tag` unless the build host has it already; returns what the host now has."""
    import docker

    observer = observer or BuildObserver()
    base_id = _checked_base(api, spec)
    existing = image_id(api, spec.tag)
    if existing is not None and not rebuild:
        return _built(api, spec, existing, 0.0, None, reused=True)
    log_path = _log_path(spec, log_dir)
    started = time.monotonic()
    with open(log_path, "w") as log:
        log.write(f"# build of {spec.tag} on base {spec.base_image} ({base_id})\n# Dockerfile:\n")
        log.write("".join(f"#   {line}\n" for line in spec.dockerfile.splitlines()))
        events = _BuildEvents(spec, log, log_path, observer)
        try:
            for event in _start_build(spec, api, observer, rebuild, timeout_s):
                events.feed(event)
        except docker.errors.APIError as exc:
            log.write(f"ERROR: {exc}\n")
            raise ImageBuildError(
                f"build of {spec.tag} failed at {events.step_header}: {_short(exc)}",
                f"full log: {log_path}",
                [*events.step_lines, _short(exc)],
                str(log_path),
            ) from exc
        except (OSError, docker.errors.DockerException) as exc:
            log.write(f"ERROR: {exc}\n")
            raise ImageError(
                f"lost the connection to the build host while building {spec.tag}: {_short(exc)}",
                f"check the daemon; log: {log_path}",
            ) from exc
    seconds = time.monotonic() - started
    final_id = image_id(api, spec.tag)
    if final_id is None or (events.built_id is not None and final_id != events.built_id):
        raise ImageError(f"the build of {spec.tag} ended without the image", f"see {log_path}")
    return _built(api, spec, final_id, seconds, str(log_path), reused=False)


def _checked_base(api: docker.APIClient, spec: ImageSpec) -> str:
    """The base image's id on the build host: the one the tag was computed from."""
    base_id = require_base(api, spec.base_image, spec.profile.name)
    if spec.base_id is not None and base_id != spec.base_id:
        raise ImageError(
            f"base image {spec.base_image} changed on the build host while the tag was computed",
            "run the command again",
        )
    if spec.base_id is None:
        raise ImageError(
            "image spec has no base image id", "resolve the base on the build host first"
        )
    return base_id


def _log_path(spec: ImageSpec, log_dir: Path | None) -> Path:
    """A new build log: one file per build, named by profile, digest and time."""
    log_dir = log_dir or default_log_dir()
    log_dir.mkdir(parents=True, exist_ok=True)
    stamp = utcnow().strftime("%Y%m%dT%H%M%SZ")
    return log_dir / f"{spec.profile.name}-{spec.digest[:16]}-{stamp}.log"


def _start_build(
    spec: ImageSpec,
    api: docker.APIClient,
    observer: BuildObserver,
    rebuild: bool,
    timeout_s: float,
) -> Iterator[dict[str, Any]]:
    """The daemon's build of the spec's context, as decoded events."""
    stream: Iterator[dict[str, Any]] = api.build(
        fileobj=context_chunks(spec, observer.on_upload),
        custom_context=True,
        tag=spec.tag,
        labels=dict(image_labels(spec)),
        rm=True,
        forcerm=True,
        nocache=rebuild,
        decode=True,
        timeout=int(timeout_s),
        # The system stage may install packages: the build host's own network (and its
        # proxy, which Docker keeps out of the image's history) reach the mirrors.
        network_mode="host",
        buildargs=proxy_build_args(os.environ),
    )
    return stream


class _BuildEvents:
    """Docker's build events, written to the log and told to the observer. Keeps the current
    step and its last lines (what a failure names) and the id the build reported."""

    def __init__(
        self, spec: ImageSpec, log: TextIO, log_path: Path, observer: BuildObserver
    ) -> None:
        self.spec, self.log, self.log_path, self.observer = spec, log, log_path, observer
        self.step_header = "(before the first step)"
        self.step_lines: deque[str] = deque(maxlen=TAIL_LINES)
        self.built_id: str | None = None

    def feed(self, event: dict[str, Any]) -> None:
        if "error" in event:
            detail = str(event.get("errorDetail", {}).get("message") or event["error"]).strip()
            self.log.write(f"ERROR: {detail}\n")
            tail = [*self.step_lines, detail]
            raise ImageBuildError(
                f"build of {self.spec.tag} failed at {_failure(self.step_header, detail, tail)}",
                f"full log: {self.log_path}",
                tail,
                str(self.log_path),
            )
        if "aux" in event and isinstance(event["aux"], dict) and "ID" in event["aux"]:
            self.built_id = str(event["aux"]["ID"])
        text = event.get("stream")
        if not text:
            return
        self.log.write(text)
        for line in text.splitlines():
            if line.strip():
                self._line(line)

    def _line(self, line: str) -> None:
        if line.startswith("Step ") and " : " in line:
            self.step_header = line.strip()
            self.step_lines.clear()
            _notify_step(self.observer, self.step_header)
        else:
            self.step_lines.append(_ANSI.sub("", line).rstrip())
        self.observer.lines.append(line)
        if self.observer.on_line:
            self.observer.on_line(line)


def _notify_step(observer: BuildObserver, header: str) -> None:
    if not observer.on_step:
        return
    # "Step 3/9 : RUN ..." -> (3, 9, "RUN ...")
    head, _, instruction = header.partition(" : ")
    number, _, total = head.removeprefix("Step ").partition("/")
    try:
        observer.on_step(int(number), int(total), instruction)
    except ValueError:
        pass


def _built(
    api: Any, spec: ImageSpec, iid: str, seconds: float, log_path: str | None, reused: bool
) -> BuiltImage:
    info = api.inspect_image(iid)
    return BuiltImage(
        tag=spec.tag,
        image_id=iid,
        size_bytes=int(info.get("Size") or 0),
        build_seconds=round(seconds, 3),
        log_path=log_path,
        reused=reused,
        created=info.get("Created"),
    )


STEP_TITLE_CHARS = 100
_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # the daemon colours a step's stderr
# The builder's own lines between a step's output and its error.
_DOCKER_CHATTER = re.compile(r"^\s*(---> |Removing intermediate container )")


def _failure(step_header: str, detail: str, step_lines: list[str]) -> str:
    """The failed step in one line: its title (a long RUN cut short) and what it said last.

    Docker's own detail repeats the whole command; a step's last output line (our scripts end
    with `error: ...`) says why it failed."""
    title = step_header
    if len(title) > STEP_TITLE_CHARS:
        title = title[: STEP_TITLE_CHARS - 1].rstrip() + "…"
    code = re.search(r"returned a non-zero code: (\d+)", detail)
    said = next(
        (
            line.strip()
            for line in reversed(step_lines[:-1])
            if line.strip() and not _DOCKER_CHATTER.match(line)
        ),
        "",
    )
    if code and said:
        return f"{title}: exit {code.group(1)}: {said}"
    return f"{title}: {detail}"


def _short(exc: BaseException) -> str:
    text = str(getattr(exc, "explanation", None) or exc).strip()
    return " ".join(text.split())[:500]
