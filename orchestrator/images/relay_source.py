"""The build host's side of a relay: `docker save` turned into the relay stream, on disk.

`docker save` writes its members in an order of its own (Docker 20.10: sorted by name, so layers
by a v1 id that says nothing about their content). Each member is hashed as it is read: a layer
whose sha256 (its diff id) some node needs is kept as an L record, the config (whose sha256 is
the image id) becomes the C record after the last layer, everything else is dropped. Records
are appended to a spool file and become visible to readers once complete, so the first node
receives a layer while the next one is still being read; any number of readers (rounds) can
replay the stream from the start.
"""

from __future__ import annotations

import hashlib
import shutil
import tarfile
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO

from orchestrator.errors import ImageError
from orchestrator.images.layers import chain_ids, legacy_layer_chain
from orchestrator.nodeside.relay_agent import CONFIG, END, KEEPALIVE, LAYER, MAGIC, pack_header

READ_SIZE = 1 << 20
IN_MEMORY_MAX = 16 << 20  # members up to this size are hashed in memory, not spooled


class _ChunkFile:
    """A file-like reader over an iterator of byte chunks (the docker SDK's save stream)."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._chunk = b""
        self._pos = 0

    def read(self, size: int = -1) -> bytes:
        parts: list[bytes] = []
        count = 0
        while size < 0 or count < size:
            if self._pos >= len(self._chunk):
                self._chunk, self._pos = next(self._chunks, b""), 0
                if not self._chunk:
                    break
            left = len(self._chunk) - self._pos
            take = left if size < 0 else min(size - count, left)
            parts.append(self._chunk[self._pos : self._pos + take])
            self._pos += take
            count += take
        return b"".join(parts)


class SaveSpool:
    """`start()` reads the save stream in a thread; `stream()` yields the relay stream."""

    def __init__(
        self,
        open_save: Callable[[], Iterable[bytes]],
        image_id: str,
        wanted: Iterable[str] | None,
        estimate_bytes: int = 0,
        diff_ids: Sequence[str] = (),
    ) -> None:
        self.image_id = image_id
        self.wanted: set[str] = set(wanted or ())
        self._wanted_known = threading.Event()  # None: set_wanted() says it later
        if wanted is not None:
            self._wanted_known.set()
        # Legacy save folders named by a v1 id: told from their json before the layer is read.
        self._by_chain = dict(zip(chain_ids(diff_ids), diff_ids))
        self._folders: dict[str, str] = {}  # folder -> diff id
        self.layers: list[str] = []  # diff ids in stream order
        self.payload_bytes = 0  # layer and config bytes in the stream
        self._open_save = open_save
        self._dir = Path(tempfile.mkdtemp(prefix="orchestrator-relay-"))
        free = shutil.disk_usage(self._dir).free
        if estimate_bytes > free:
            shutil.rmtree(self._dir, ignore_errors=True)  # nothing else is open yet
            raise ImageError(
                f"the relay spool needs up to {estimate_bytes / 1e9:.1f} GB in "
                f"{self._dir.parent}, which has {free / 1e9:.1f} GB free",
                "set TMPDIR to a folder with room, or distribute with --distribution star",
            )
        self._closed = False
        self._path = self._dir / "stream"
        self._file: IO[bytes] = open(self._path, "w+b")
        self._cond = threading.Condition()
        self._committed = 0
        self._finished = False
        self._error: BaseException | None = None
        self._append(MAGIC)
        self._thread = threading.Thread(target=self._run, name="relay-spool", daemon=True)

    def start(self) -> SaveSpool:
        self._thread.start()
        return self

    def set_wanted(self, wanted: Iterable[str]) -> None:
        """The layers to keep, once the nodes have said what they lack (docker save has been
        exporting meanwhile)."""
        self.wanted = set(wanted)
        self._wanted_known.set()

    @property
    def finished(self) -> bool:
        with self._cond:
            return self._finished

    @property
    def stream_bytes(self) -> int:
        with self._cond:
            return self._committed

    def _append(self, data: bytes) -> None:
        self._file.write(data)
        self._commit()

    def _commit(self) -> None:
        self._file.flush()
        with self._cond:
            self._committed = self._file.tell()
            self._cond.notify_all()

    def _run(self) -> None:
        try:
            config = self._spool_members()
            if config is None:
                raise ImageError(f"docker save of {self.image_id} did not contain its config")
            missing = sorted(self.wanted - set(self.layers))
            if missing:
                raise ImageError(
                    f"docker save of {self.image_id} did not contain layer {missing[0]}"
                )
            self._append(pack_header(CONFIG, len(config), self.image_id) + config)
            self.payload_bytes += len(config)
            self._append(pack_header(END))
        except BaseException as exc:
            self._error = exc
        finally:
            with self._cond:
                self._finished = True
                self._cond.notify_all()

    def _spool_members(self) -> bytes | None:
        config = None
        save = _ChunkFile(self._open_save())  # the daemon starts exporting now
        self._wanted_known.wait()
        if self._closed:
            raise ImageError("the distribution ended before the nodes said what they lack")
        with tarfile.open(fileobj=save, mode="r|", bufsize=READ_SIZE) as tar:  # type: ignore[call-overload]
            for member in tar:
                source = tar.extractfile(member) if member.isfile() else None
                if source is None:
                    continue
                folder, _, name = member.name.rpartition("/")
                known = self._folders.get(folder) if name == "layer.tar" else None
                if known is not None:
                    if self._keep(known):
                        self._spool_known(source, member.size, known)
                    continue  # a layer no node lacks: not even read into memory
                if member.size <= IN_MEMORY_MAX:
                    data = source.read()
                    if name == "json" and self._by_chain:
                        self._recognise(folder, data)
                    digest = "sha256:" + hashlib.sha256(data).hexdigest()
                    if digest == self.image_id:
                        config = data
                    elif self._keep(digest):
                        self._append(pack_header(LAYER, len(data), digest) + data)
                        self._taken(digest, len(data))
                else:
                    self._spool_large(source, member.size)
        return config

    def _recognise(self, folder: str, v1_json: bytes) -> None:
        chain = legacy_layer_chain(v1_json.decode("utf-8", "replace"), list(self._by_chain))
        if chain is not None:
            self._folders[folder] = self._by_chain[chain]

    def _spool_known(self, source: IO[bytes], size: int, digest: str) -> None:
        """A layer known by its folder: passed on as it is read (readers get it at once) and
        checked at its end."""
        self._append(pack_header(LAYER, size, digest))
        hasher = hashlib.sha256()
        while chunk := source.read(READ_SIZE):
            hasher.update(chunk)
            self._append(chunk)
        if "sha256:" + hasher.hexdigest() != digest:
            raise ImageError(
                f"docker save of {self.image_id} gave layer {digest} other content "
                f"(sha256:{hasher.hexdigest()})"
            )
        self._taken(digest, size)

    def _keep(self, digest: str) -> bool:
        return digest in self.wanted and digest not in self.layers

    def _taken(self, digest: str, size: int) -> None:
        self.layers.append(digest)
        self.payload_bytes += size

    def _spool_large(self, source: IO[bytes], size: int) -> None:
        """Written after a placeholder header while hashed; kept (header filled in) or cut off."""
        start = self._file.tell()
        self._file.write(pack_header(KEEPALIVE))
        hasher = hashlib.sha256()
        while chunk := source.read(READ_SIZE):
            hasher.update(chunk)
            self._file.write(chunk)
        digest = "sha256:" + hasher.hexdigest()
        if self._keep(digest):
            end = self._file.tell()
            self._file.seek(start)
            self._file.write(pack_header(LAYER, size, digest))
            self._file.seek(end)
            self._taken(digest, size)
            self._commit()
        else:
            self._file.seek(start)
            self._file.truncate(start)

    def stream(self, keepalive_s: float = 1.0) -> Iterator[bytes]:
        """The relay stream from its start; a K record whenever nothing new came for
        keepalive_s (docker save exports the whole image before its first byte)."""
        with open(self._path, "rb", buffering=0) as reader:  # never stale read-ahead
            offset = 0
            while True:
                with self._cond:
                    if offset == self._committed and not self._finished:
                        self._cond.wait(keepalive_s)
                    committed, finished, error = self._committed, self._finished, self._error
                if error is not None:
                    raise ImageError(f"docker save on the build host failed: {error}")
                if offset < committed:
                    reader.seek(offset)
                    while offset < committed:
                        chunk = reader.read(min(READ_SIZE, committed - offset))
                        if not chunk:
                            raise ImageError(f"the relay spool {self._path} lost its data")
                        offset += len(chunk)
                        yield chunk
                elif finished:
                    return
                else:
                    yield pack_header(KEEPALIVE)

    def close(self) -> None:
        self._closed = True
        self._wanted_known.set()
        self._file.close()
        shutil.rmtree(self._dir, ignore_errors=True)
