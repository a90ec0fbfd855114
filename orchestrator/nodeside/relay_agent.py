"""Runs ON a node for one image distribution by relay (orchestrator/images/relay.py starts it
over SSH as `python3 -c <this file>`). Standard library only, Python 3.8+; imports nothing from
orchestrator (the controller imports this module for the stream format).

The agent receives the relay stream (from its SSH stdin, or from the previous node over TCP),
passes every byte on to the next node at once, checks every record's sha256, writes the layers
its own daemon lacks into a `docker load`, and tags the image only when the loaded image id is
the expected one. Its own load failing does not stop the relay.

stdin, line 1 (JSON): image (expected id), tag, docker (argv prefix), listen (address to
  accept an upstream on), token (what that upstream must send first), stall_s (silence that
  means a broken upstream), deadline_s, corrupt_forward_at (tests only: flip one bit of the
  forwarded stream at this offset, a corrupted hop).
stdout: {"ev": "ready", "port": P, "layers": [[diff ids of each image the daemon holds]]}.
stdin, line 2: need (the diff ids to load), source ("stdin": the stream follows on stdin and
  the port closes at once; "listen": one upstream connects with the token, then the port
  closes; other connections get AUTH_S to send it and are closed), forward ({host, port, token} of the next node, or null), send_timeout_s.
stdout then: {"ev": "status", ...} every 0.5 s, {"ev": "forward_lost", "why"}, and last
  {"ev": "done", ...} or {"ev": "failed", "kind", "why"}. Exit 0 only after "done", when the
  tag names the expected image id.

The stream: MAGIC, then records HEADER(kind, length, sha256) + payload: L (a layer tar, its
sha256 is its diff id), C (the image config, its sha256 is the image id, last before E),
K (keep-alive, empty), E (end, empty).
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import os
import queue
import resource
import select
import socket
import struct
import subprocess
import sys
import tarfile
import threading
import time

MAGIC = b"ORCHRELAY1\n"
HEADER = struct.Struct("!cQ32s")  # kind, payload length, sha256 of the payload
LAYER, CONFIG, KEEPALIVE, END = b"L", b"C", b"K", b"E"
CHUNK = 1 << 20
F_SETPIPE_SZ = 1031  # fcntl.F_SETPIPE_SZ from Python 3.10 on
SMALL_READ = 1 << 17  # a read this small waits a moment before the next: fewer, larger reads
QUEUE_CHUNKS = (
    32  # per sink, of up to CHUNK bytes: between the reader and docker load or the next node
)
STATUS_EVERY_S = 0.5
MAX_CONFIG_BYTES = 16 << 20
AUTH_S = 2.0  # a connection to the listening port must have sent its token within this
MAX_PENDING = 32  # connections that have not sent it yet; the oldest goes first
# The stall clock restarts on a complete record or on this many bytes: an upstream that
# trickles a byte now and then is as broken as a silent one.
PROGRESS_BYTES = 1 << 20


def pack_header(kind, length=0, digest=""):
    """A record header; `digest` is "sha256:<hex>" (or empty for K and E)."""
    raw = bytes.fromhex(digest.split(":", 1)[-1]) if digest else bytes(32)
    return HEADER.pack(kind, length, raw)


def tar_member_header(name, size):
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o644, 0
    return info.tobuf(format=tarfile.USTAR_FORMAT)


def tar_padding(size):
    return bytes((512 - size % 512) % 512)


def load_manifest(image_id, diff_ids):
    """manifest.json of a `docker save` stream: layers by diff id; RepoTags empty so that
    `docker load` tags nothing (the agent tags after checking the id)."""
    return json.dumps(
        [
            {
                "Config": image_id.split(":", 1)[1] + ".json",
                "RepoTags": None,
                "Layers": [d.split(":", 1)[1] + "/layer.tar" for d in diff_ids],
            }
        ]
    ).encode()


class Failure(Exception):
    def __init__(self, kind, why):
        super().__init__(why)
        self.kind, self.why = kind, why


class Emitter:
    """JSON lines on stdout; a closed stdout means the controller is gone."""

    def __init__(self, stream, abort):
        self.stream, self.abort, self.lock = stream, abort, threading.Lock()

    def __call__(self, ev, **fields):
        fields["ev"] = ev
        with self.lock:
            try:
                self.stream.write(json.dumps(fields).encode() + b"\n")
                self.stream.flush()
            except (OSError, ValueError):
                self.abort.fire("the controller's connection is gone")


class Abort:
    def __init__(self):
        self.event, self.why = threading.Event(), ""

    def fire(self, why):
        if not self.event.is_set():
            self.why = why
            self.event.set()

    def check(self):
        if self.event.is_set():
            raise Failure("aborted", self.why)


class FdReader:
    """Lines, then raw bytes, from a file descriptor, with a timeout per read."""

    def __init__(self, fd):
        self.fd, self.pending = fd, b""
        try:  # a pipe (sshd's) of 1 MiB, not 64 KiB: the reader may pause a few ms
            fcntl.fcntl(fd, F_SETPIPE_SZ, CHUNK)
            self.roomy = True
        except OSError:
            self.roomy = False

    def line(self):
        while b"\n" not in self.pending:
            data = os.read(self.fd, 65536)
            if not data:
                raise Failure("aborted", "stdin closed before the controller's instructions")
            self.pending += data
        line, _, self.pending = self.pending.partition(b"\n")
        return line

    def read(self, timeout):
        if self.pending:
            data, self.pending = self.pending, b""
            return data
        if not select.select([self.fd], [], [], timeout)[0]:
            return None
        return os.read(self.fd, CHUNK)


class SockReader:
    roomy = True  # the kernel's socket buffer holds far more than a few ms of data

    def __init__(self, sock):
        self.sock = sock

    def read(self, timeout):
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(CHUNK)
        except socket.timeout:
            return None
        except OSError as exc:
            raise Failure("upstream", f"the upstream connection broke: {exc}") from None


class Sink(threading.Thread):
    """Consumes chunks from a bounded queue; once dead, puts are dropped."""

    def __init__(self, name, abort):
        super().__init__(name=name, daemon=True)
        self.q: queue.Queue[bytes | memoryview | None] = queue.Queue(QUEUE_CHUNKS)
        self.dead, self.error, self.sent, self.abort = threading.Event(), "", 0, abort

    def put(self, chunk):
        while not self.dead.is_set():
            self.abort.check()
            try:
                self.q.put(chunk, timeout=0.2)
                return
            except queue.Full:
                continue

    def chunks(self):
        while True:
            chunk = self.q.get()
            if chunk is None:
                return
            yield chunk

    def die(self, why):
        self.error = self.error or why
        self.dead.set()
        while True:  # unblock the reader
            try:
                self.q.get_nowait()
            except queue.Empty:
                return


class LoadSink(Sink):
    """A `docker load` fed with a tar of the needed layers, the config and the manifest."""

    def __init__(self, docker, abort):
        super().__init__("docker-load", abort)
        self.output = ""
        self.proc: subprocess.Popen[bytes] | None = None
        try:
            self.proc = subprocess.Popen(
                docker + ["load"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
        except OSError as exc:
            self.die(f"cannot start docker load: {exc}")

    def run(self):
        proc = self.proc
        if proc is None or proc.stdin is None or proc.stdout is None:
            return
        try:
            for chunk in self.chunks():
                proc.stdin.write(chunk)
                self.sent += len(chunk)
            proc.stdin.close()
        except OSError:
            pass  # docker load ended early: its output says why
        self.output = proc.stdout.read().decode("utf-8", "replace").strip()
        if proc.wait() != 0 and not self.dead.is_set():
            self.die("docker load failed: " + (self.output.splitlines() or ["?"])[-1])

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()


class ForwardSink(Sink):
    """The next node: TCP, the token first, then every byte as it came."""

    def __init__(self, target, stall_s, abort, corrupt_at=None):
        super().__init__("forward", abort)
        self.target, self.stall_s, self.corrupt_at, self.sock = target, stall_s, corrupt_at, None
        self.reported = False  # the controller was told that the next node is lost

    def connect(self):
        where = f"{self.target['host']}:{self.target['port']}"
        try:
            sock = socket.create_connection(
                (self.target["host"], int(self.target["port"])), timeout=self.stall_s
            )
            sock.sendall(self.target["token"].encode() + b"\n")
            if sock.recv(3) != b"OK\n":
                raise OSError("the next node refused the token")
        except OSError as exc:
            self.die(f"cannot connect to the next node at {where}: {exc}")
            return
        self.sock = sock

    def run(self):
        if self.sock is None:
            return
        try:
            for chunk in self.chunks():
                if self.corrupt_at is not None and self.sent <= self.corrupt_at < self.sent + len(
                    chunk
                ):
                    flipped = bytearray(chunk)
                    flipped[self.corrupt_at - self.sent] ^= 0x01
                    chunk = bytes(flipped)
                self.sock.sendall(chunk)
                self.sent += len(chunk)
            self.sock.shutdown(socket.SHUT_WR)
            self.sock.recv(1)  # the next node closes once it has read the end
        except OSError as exc:
            self.die(f"sending to the next node failed after {self.sent} bytes: {exc}")
        finally:
            self.sock.close()


class Agent:
    def __init__(self, conf, stdin, emit, abort):
        self.conf, self.stdin, self.emit, self.abort = conf, stdin, emit, abort
        self.stall_s = float(conf.get("stall_s", 60))
        self.need: set[str] = set()  # from line 2
        self.received = 0  # stream bytes in
        self.loaded: set[str] = set()
        self.config_seen = False
        self.load = LoadSink(list(conf["docker"]), abort)  # docker load starts at once
        self.forward: ForwardSink | None = None

    def listen(self):
        """A port on the node's own address, and only there."""
        address = self.conf["listen"]
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            listener.bind((address, 0))
        except OSError as exc:
            listener.close()
            raise Failure(
                "listen",
                f"cannot listen on {address}: {exc.strerror or exc}; the node's address in the "
                'cluster file must be one of its own (or use distribution = "star")',
            ) from None
        listener.listen(16)
        return listener

    def accept(self, listener):
        """The connection that sends the token first. Others are served side by side: each
        has AUTH_S to send as many bytes as the token has, then it is compared (in constant
        time, whole: a byte-by-byte answer would tell the token) and closed unless it
        matches; idle ones do not hold up the upstream."""
        token = self.conf["token"].encode() + b"\n"
        deadline = time.monotonic() + self.stall_s
        listener.setblocking(False)
        pending: dict[socket.socket, tuple[float, bytes]] = {}  # -> (token due by, bytes so far)
        try:
            while True:
                self.abort.check()
                now = time.monotonic()
                if now >= deadline:
                    raise Failure("upstream", f"no upstream connected within {self.stall_s:g}s")
                for conn in [c for c, (until, _) in pending.items() if until <= now]:
                    del pending[conn]
                    conn.close()
                ready = select.select([listener, *pending], [], [], 0.2)[0]
                for sock in ready:
                    if sock is listener:
                        self.take(listener, pending, now)
                        continue
                    found = self.hear(sock, pending, token)
                    if found is not None:
                        return found
        finally:
            for conn in pending:
                conn.close()

    @staticmethod
    def take(listener, pending, now):
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        conn.setblocking(False)
        if len(pending) >= MAX_PENDING:
            oldest = min(pending, key=lambda c: pending[c][0])
            del pending[oldest]
            oldest.close()
        pending[conn] = (now + AUTH_S, b"")

    @staticmethod
    def hear(sock, pending, token):
        """More of a pending connection's first line; the connection once it is the token."""
        until, got = pending[sock]
        try:
            data = sock.recv(len(token) - len(got))
        except BlockingIOError:
            return None
        except OSError:
            data = b""
        got += data
        if data and len(got) < len(token) and b"\n" not in got:
            pending[sock] = (until, got)
            return None
        del pending[sock]
        if len(got) == len(token) and hmac.compare_digest(got, token):
            try:
                sock.setblocking(True)
                sock.sendall(b"OK\n")
                return sock
            except OSError:
                pass
        sock.close()  # not our upstream: keep waiting for it
        return None

    def layers(self):
        """The diff ids of every image the daemon holds (the controller works out the rest)."""
        docker = list(self.conf["docker"])
        listed = subprocess.run(
            docker + ["image", "ls", "--all", "--quiet", "--no-trunc"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        out = listed.stdout.decode("utf-8", "replace").strip()
        if listed.returncode != 0:
            raise Failure(
                "load", "cannot ask the Docker daemon: " + (out.splitlines() or ["?"])[-1]
            )
        ids = sorted(set(out.split()))
        if not ids:
            return []
        inspected = subprocess.run(  # an image removed meanwhile is no error
            docker + ["image", "inspect", "--format", "{{json .RootFS.Layers}}", *ids],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        found = []
        for line in inspected.stdout.decode("utf-8", "replace").splitlines():
            try:
                layers = json.loads(line)
            except ValueError:
                continue
            if isinstance(layers, list):
                found.append(layers)
        return found

    def run(self, listener):
        plan = json.loads(self.stdin.line().decode())
        self.need = set(plan["need"])
        if plan["source"] == "stdin":
            listener.close()
        self.load.start()
        if plan.get("forward"):
            timeout = float(plan.get("send_timeout_s", self.stall_s))
            self.forward = ForwardSink(
                plan["forward"], timeout, self.abort, self.conf.get("corrupt_forward_at")
            )
            self.forward.connect()
            self.forward.start()
        if plan["source"] == "stdin":
            source = self.stdin
        else:
            source = SockReader(self.accept(listener))
            listener.close()
            threading.Thread(target=self.watch_stdin, daemon=True).start()
        try:
            self.relay(source)
        finally:
            if isinstance(source, SockReader):
                source.sock.close()
        return self.finish()

    def watch_stdin(self):
        try:
            while os.read(self.stdin.fd, 4096):
                pass
        except OSError:
            pass
        self.abort.fire("the controller closed its connection")

    def relay(self, source):
        parser = Parser(self)
        since, got, records = time.monotonic(), 0, 0  # the stall clock
        while not parser.ended:
            self.abort.check()
            data = source.read(1.0)
            if data is not None and not data:
                raise Failure(
                    "upstream", f"the stream ended after {self.received} bytes, before its end"
                )
            if data:
                self.received += len(data)
                got += len(data)
                if self.forward is not None:
                    self.forward.put(data)  # passed on before it is checked: a pipeline
                parser.feed(data)
            if parser.records != records or got >= PROGRESS_BYTES:
                since, got, records = time.monotonic(), 0, parser.records
            elif time.monotonic() - since >= self.stall_s:
                raise Failure(
                    "upstream",
                    f"the upstream sent {got} bytes and no whole record in {self.stall_s:g}s "
                    "(stalled or trickling)",
                )
            if data and len(data) < SMALL_READ and source.roomy:
                time.sleep(0.005)  # at 25 MB/s, 5 ms is 125 KB: ten times fewer wake-ups

    def finish(self):
        forward = self.forward
        if forward is not None:
            forward.put(None)
        self.load.join()
        if self.load.dead.is_set():
            raise Failure("load", self.load.error)
        self.check_and_tag()
        if forward is not None:
            forward.join(forward.stall_s * 2)
        usage = [
            resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
        ]
        self.emit(
            "done",
            received=self.received,
            loaded=self.load.sent,
            layers=sorted(self.loaded),
            cpu_s=round(sum(u.ru_utime + u.ru_stime for u in usage), 2),  # with its docker CLIs
        )
        return 0

    def check_and_tag(self):
        image = self.conf["image"]
        docker = list(self.conf["docker"])
        found = subprocess.run(
            docker + ["image", "inspect", "--format", "{{.Id}}", image],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        if found.returncode != 0 or found.stdout.decode().strip() != image:
            why = found.stdout.decode("utf-8", "replace").strip() or "nothing"
            raise Failure("verify", f"after docker load the node has {why}, not {image}")
        tagged = subprocess.run(
            docker + ["tag", image, self.conf["tag"]],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        if tagged.returncode != 0:
            raise Failure("load", "docker tag failed: " + tagged.stdout.decode("utf-8", "replace"))
        named = subprocess.run(
            docker + ["image", "inspect", "--format", "{{.Id}}", self.conf["tag"]],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        if named.stdout.decode("utf-8", "replace").strip() != image:
            raise Failure("verify", f"{self.conf['tag']} does not name {image} after docker tag")

    # -- records, called by the Parser -----------------------------------------------------

    def record_start(self, kind, length, digest):
        if kind == LAYER and digest in self.need and digest not in self.loaded:
            self.load_put(tar_member_header(digest.split(":")[1] + "/layer.tar", length))
            return True
        if kind == CONFIG and length > MAX_CONFIG_BYTES:
            raise Failure("corrupt", f"an image config of {length} bytes")
        return False

    def record_end(self, kind, length, digest, actual, loading, payload):
        if actual != digest:
            raise Failure(
                "corrupt",
                f"the stream is corrupted: a {kind.decode()} record of {length} bytes has "
                f"sha256 {actual[:19]}, not {digest[:19]}",
            )
        if kind == LAYER and loading:
            self.load_put(tar_padding(length))
            self.loaded.add(digest)
        elif kind == CONFIG:
            self.config_end(payload)

    def config_end(self, payload):
        image = self.conf["image"]
        if "sha256:" + hashlib.sha256(payload).hexdigest() != image:
            raise Failure("corrupt", f"the stream carried another image's config, not {image}")
        diff_ids = json.loads(payload.decode())["rootfs"]["diff_ids"]
        missing = sorted(self.need - self.loaded)
        if missing:
            raise Failure("corrupt", f"the stream lacked layer {missing[0]}")
        self.config_seen = True
        name = image.split(":", 1)[1] + ".json"
        manifest = load_manifest(image, diff_ids)
        for member, data in ((name, payload), ("manifest.json", manifest)):
            self.load_put(tar_member_header(member, len(data)) + data + tar_padding(len(data)))
        self.load_put(bytes(1024))  # the tar's end
        self.load_put(None)

    def load_put(self, data):
        if not self.load.dead.is_set():
            self.load.put(data)


class Parser:
    """Splits the stream into records and checks each one's sha256 as it passes."""

    def __init__(self, agent):
        self.agent, self.magic, self.head = agent, b"", b""
        self.kind: bytes | None = None
        self.length, self.digest, self.left = 0, "", 0
        self.hasher = hashlib.sha256()
        self.payload = bytearray()
        self.keep, self.loading, self.ended = False, False, False
        self.records = 0  # complete records so far

    def feed(self, data):
        view, pos = memoryview(data), 0
        while pos < len(view) and not self.ended:
            if len(self.magic) < len(MAGIC):
                take = min(len(MAGIC) - len(self.magic), len(view) - pos)
                self.magic += bytes(view[pos : pos + take])
                pos += take
                if not MAGIC.startswith(self.magic):
                    raise Failure("corrupt", "the stream does not start like a relay stream")
            elif self.kind is None:
                take = min(HEADER.size - len(self.head), len(view) - pos)
                self.head += bytes(view[pos : pos + take])
                pos += take
                if len(self.head) == HEADER.size:
                    self.start(*HEADER.unpack(self.head))
                    self.head = b""
            else:
                take = min(self.left, len(view) - pos)
                self.payload_part(view[pos : pos + take])
                pos += take
            if self.kind is not None and self.left == 0:
                self.end()

    def start(self, kind, length, raw_digest):
        if kind not in (LAYER, CONFIG, KEEPALIVE, END):
            raise Failure("corrupt", f"the stream has an unknown record kind {kind!r}")
        self.kind, self.length, self.left = kind, length, length
        self.digest = "sha256:" + raw_digest.hex() if kind in (LAYER, CONFIG) else ""
        self.hasher = hashlib.sha256()
        self.payload, self.keep = bytearray(), kind == CONFIG
        self.loading = self.agent.record_start(kind, length, self.digest)

    def payload_part(self, part):
        self.hasher.update(part)
        self.left -= len(part)
        if self.keep:
            self.payload += part
        if self.loading:
            self.agent.load_put(part)  # a view: the chunk it shows is never changed

    def end(self):
        kind = self.kind or b"?"
        if kind in (LAYER, CONFIG):
            actual = "sha256:" + self.hasher.hexdigest()
            self.agent.record_end(
                kind, self.length, self.digest, actual, self.loading, bytes(self.payload)
            )
        elif kind == END:
            if not self.agent.config_seen:
                raise Failure("corrupt", "the stream ended without the image config")
            self.ended = True
        elif self.length:
            raise Failure("corrupt", f"a {kind.decode()} record with a payload")
        self.kind = None
        self.records += 1


def _status(agent, emit, stop):
    while not stop.wait(STATUS_EVERY_S):
        forward = agent.forward
        emit(
            "status",
            received=agent.received,
            forwarded=forward.sent if forward is not None else 0,
            loaded=agent.load.sent,
        )
        if forward is not None and forward.dead.is_set() and not forward.reported:
            forward.reported = True
            emit("forward_lost", why=forward.error)


def main():
    abort = Abort()
    emit = Emitter(sys.stdout.buffer, abort)
    stdin = FdReader(0)
    agent, stop = None, threading.Event()
    try:
        conf = json.loads(stdin.line().decode())
        agent = Agent(conf, stdin, emit, abort)
        deadline = threading.Timer(float(conf.get("deadline_s", 3600)), abort.fire, ("deadline",))
        deadline.daemon = True
        deadline.start()
        listener = agent.listen()
        emit("ready", port=listener.getsockname()[1], layers=agent.layers())
        threading.Thread(target=_status, args=(agent, emit, stop), daemon=True).start()
        code = agent.run(listener)
    except Failure as exc:
        emit("failed", kind=exc.kind, why=exc.why)
        code = 1
    except Exception as exc:  # a bug or bad input: say so, in one line
        emit("failed", kind="internal", why=f"{type(exc).__name__}: {exc}")
        code = 1
    finally:
        stop.set()
        if agent is not None and code != 0:
            agent.load.kill()  # an incomplete or corrupted stream is never loaded
            forward = agent.forward
            if forward is not None and forward.sock is not None:
                forward.sock.close()
    sys.stdout.flush()
    os._exit(code)  # daemon threads may be blocked in I/O: do not wait for them


if __name__ == "__main__":
    main()
