"""The `local` node: subprocesses on this machine, with the same semantics as over SSH.

A fresh machine needs no sshd to try the tool: the embedded default cluster is one node whose
address is `local`. Commands are argv lists run without a shell of the user's (a fixed `sh`
wrapper gives the same cwd and not-found behaviour as a login shell), each in a new session
so that a timeout or a teardown kills the whole process group.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO

from orchestrator.pathnames import NOT_REGULAR, copy_regular, is_safe_name, left_out
from orchestrator.specs import NodeSpec, SshSettings
from orchestrator.transport import shell
from orchestrator.transport.base import (
    CommandResult,
    CommandTimedOut,
    Pipe,
    ProgressCallback,
    RemoteProcess,
    Stdin,
    StreamedProcess,
    Transport,
    check_argv,
    check_env,
    file_errors,
    node_error,
)

_LOG_POLL_S = 0.02


def shell_exit_code(returncode: int) -> int:
    """Popen's -N for "killed by signal N" as a shell reports it: 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


class LocalTransport(Transport):
    """Commands and files on this machine (the node whose address is `local`)."""

    def __init__(self, node: NodeSpec, ssh: SshSettings | None = None) -> None:
        self.node = node
        self.settings = ssh or SshSettings()
        self.accepted_new_host_key = None

    def _environ(self, env: dict[str, str]) -> dict[str, str] | None:
        return {**os.environ, **env} if env else None

    def _execute(
        self,
        argv: tuple[str, ...],
        env: dict[str, str],
        cwd: str | None,
        timeout: float,
        stdin: Stdin,
        progress: ProgressCallback | None,
    ) -> CommandResult:
        started = time.monotonic()
        proc = subprocess.Popen(
            shell.local_exec_argv(argv, cwd),
            stdin=subprocess.DEVNULL if stdin is None else subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=self._environ(env),
            start_new_session=True,
        )
        feeder: _StdinFeeder | None = None
        if stdin is not None:
            assert proc.stdin is not None
            # communicate() would close stdin itself; the feeder thread owns it instead.
            feeder = _StdinFeeder(proc.stdin, stdin, progress)
            proc.stdin = None
            feeder.start()
        try:
            out, err = proc.communicate(timeout=None if timeout == float("inf") else timeout)
        except subprocess.TimeoutExpired:
            _killpg(proc.pid, 9)
            proc.communicate()
            raise CommandTimedOut(self.name, argv, timeout) from None
        except BaseException:
            _killpg(proc.pid, 9)
            proc.wait()
            raise
        sent = 0
        if feeder is not None:
            feeder.join()
            if feeder.error is not None and not isinstance(feeder.error, BrokenPipeError):
                # The chunk source failed; a command that stopped reading is its own business.
                raise node_error(self.name, f"feeding stdin to `{argv[0]}`", feeder.error)
            sent = feeder.sent
        return CommandResult(
            node=self.name,
            argv=argv,
            exit_code=shell_exit_code(proc.returncode),
            stdout=out.decode("utf-8", errors="replace"),
            stderr=err.decode("utf-8", errors="replace"),
            duration_s=time.monotonic() - started,
            stdin_bytes=sent,
        )

    def spawn(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        log_path: str,
    ) -> RemoteProcess:
        words = check_argv(argv)
        environment = check_env(env)
        try:
            with open(log_path, "ab") as log:
                start = log.tell()
                proc = subprocess.Popen(
                    shell.local_spawn_argv(words, cwd, log_path),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=self._environ(environment),
                    start_new_session=True,
                )
        except OSError as exc:
            raise node_error(self.name, f"starting `{words[0]}` (log {log_path})", exc) from exc
        return LocalProcess(self, proc, log_path, start)

    def open_pipe(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        write_timeout: float | None = None,
    ) -> Pipe:
        words = check_argv(argv)
        environment = check_env(env)
        try:
            proc = subprocess.Popen(
                shell.local_exec_argv(words, cwd),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=self._environ(environment),
                start_new_session=True,
                bufsize=0,
            )
        except OSError as exc:
            raise node_error(self.name, f"starting `{words[0]}`", exc) from exc
        return LocalPipe(self, proc, words)

    # -- files --------------------------------------------------------------------------------

    def put_file(self, local: Path, remote: str) -> None:
        with file_errors(self.name, f"copying {local} to {remote}"):
            _atomic_copy(Path(local), Path(remote))

    def get_file(self, remote: str, local: Path) -> None:
        with file_errors(self.name, f"copying {remote} to {local}"):
            if not copy_regular(Path(remote), Path(local)):
                raise OSError(errno.EINVAL, NOT_REGULAR, remote)

    def get_tree(self, remote_dir: str, local_dir: Path) -> list[str]:
        with file_errors(self.name, f"copying directory {remote_dir}"):
            if not stat.S_ISDIR(os.lstat(remote_dir).st_mode):
                raise NotADirectoryError(20, "not a directory", remote_dir)
            Path(local_dir).mkdir(parents=True, exist_ok=True)
            skipped: list[str] = []
            for root, dirs, files in os.walk(remote_dir):  # never into a linked folder
                rel = Path(root).relative_to(remote_dir)
                for name in list(dirs):
                    if os.path.islink(os.path.join(root, name)) or not is_safe_name(name):
                        dirs.remove(name)
                        skipped.append(f"{rel / name} ({left_out(name, 'a link to a folder')})")
                    else:
                        (Path(local_dir) / rel / name).mkdir(exist_ok=True)
                for name in files:
                    source, target = Path(root) / name, Path(local_dir) / rel / name
                    if not is_safe_name(name) or not copy_regular(source, target):
                        skipped.append(f"{rel / name} ({left_out(name, NOT_REGULAR)})")
            return skipped

    def read_text(self, remote: str) -> str:
        with file_errors(self.name, f"reading {remote}"):
            return Path(remote).read_text(encoding="utf-8")

    def write_text(self, remote: str, text: str, mode: int = 0o644) -> None:
        with file_errors(self.name, f"writing {remote}"):
            target = Path(remote)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as handle:
                    handle.write(text)
                os.chmod(tmp, mode)
                os.replace(tmp, target)
            except BaseException:
                os.unlink(tmp)
                raise

    def exists(self, remote: str) -> bool:
        return os.path.lexists(remote)

    def makedirs(self, remote: str) -> None:
        with file_errors(self.name, f"creating directory {remote}"):
            os.makedirs(remote, exist_ok=True)

    def remove_tree(self, remote: str) -> None:
        with file_errors(self.name, f"removing {remote}"):
            if not os.path.lexists(remote):
                return
            if stat.S_ISDIR(os.lstat(remote).st_mode):
                shutil.rmtree(remote)  # removes links inside, never follows them
            else:
                os.unlink(remote)

    def close(self) -> None:
        pass


class LocalProcess(StreamedProcess):
    """A local process group; a thread follows its log file and reaps it."""

    def __init__(
        self, transport: LocalTransport, proc: subprocess.Popen[bytes], log: str, start: int
    ):
        super().__init__(transport, proc.pid)  # start_new_session: pid == pgid
        self._proc = proc
        thread = threading.Thread(
            target=self._follow, args=(log, start), name=f"log-{self.node}-{proc.pid}", daemon=True
        )
        thread.start()

    def _follow(self, log: str, offset: int) -> None:
        try:
            with open(log, "rb") as handle:
                handle.seek(offset)
                while True:
                    code = self._proc.poll()  # read after polling: nothing written is missed
                    data = handle.read()
                    if data:
                        self._feed(data)
                    if code is not None:
                        self._finish(shell_exit_code(code))
                        return
                    if not data:
                        time.sleep(_LOG_POLL_S)
        except OSError as exc:
            self._finish(None, node_error(self.node, f"following log {log}", exc))


class LocalPipe(StreamedProcess, Pipe):
    """A local command with pipes; threads read its stdout lines and its stderr."""

    def __init__(
        self, transport: LocalTransport, proc: subprocess.Popen[bytes], argv: Sequence[str]
    ) -> None:
        super().__init__(transport, proc.pid)  # start_new_session: pid == pgid
        self._proc, self._argv = proc, tuple(argv)
        self._err = bytearray()
        threading.Thread(target=self._read, name=f"pipe-{proc.pid}", daemon=True).start()
        threading.Thread(target=self._read_err, name=f"pipe-err-{proc.pid}", daemon=True).start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        while data := self._proc.stdout.read(1 << 16):
            self._feed(data)
        self._finish(shell_exit_code(self._proc.wait()))

    def _read_err(self) -> None:
        assert self._proc.stderr is not None
        while data := self._proc.stderr.read(1 << 16):
            self._err += data

    def write(self, data: bytes) -> None:
        assert self._proc.stdin is not None
        try:
            self._proc.stdin.write(data)
        except (OSError, ValueError) as exc:
            raise node_error(self.node, f"writing to `{self._argv[0]}`", exc) from None

    def close_stdin(self) -> None:
        try:
            if self._proc.stdin is not None:
                self._proc.stdin.close()
        except OSError:
            pass

    def stderr_text(self) -> str:
        return bytes(self._err).decode("utf-8", errors="replace")

    def kill_tree(self, grace_s: float = 5.0) -> None:
        super().kill_tree(grace_s)
        self.close()

    def close(self) -> None:
        self.close_stdin()


class _StdinFeeder(threading.Thread):
    """Writes stdin chunks to a pipe, counting bytes, and closes it."""

    def __init__(
        self, pipe: IO[bytes], data: bytes | Iterable[bytes], progress: ProgressCallback | None
    ):
        super().__init__(name="stdin-feeder", daemon=True)
        self.pipe, self.data, self.progress = pipe, data, progress
        self.sent = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        chunks = [self.data] if isinstance(self.data, bytes) else self.data
        try:
            for chunk in chunks:
                self.pipe.write(chunk)
                self.sent += len(chunk)
                if self.progress is not None:
                    self.progress(self.sent)
        except BaseException as exc:  # reported by the caller; a broken pipe ends the feed
            self.error = exc
        finally:
            try:
                self.pipe.close()
            except OSError:
                pass


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _atomic_copy(source: Path, target: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    os.close(fd)
    try:
        shutil.copyfile(source, tmp)
        shutil.copymode(source, tmp)
        os.replace(tmp, target)
    except BaseException:
        os.unlink(tmp)
        raise
