"""Runs ON a node (sent as `python -c <this file> <json>`): preflight checks and the
environment of the node, printed as one JSON object. Standard library only, Python 3.8+,
because the node's interpreter may be a vendor image's. Imports nothing from orchestrator.

Input (argv[1], JSON): nproc, data_dir, weights, workdir, min_free_gb, ib_hcas, smi,
need_torch, need_docker, docker_host, devices ({"look": [path], "needed": [[path, remedy]]}),
visible_devices_env (a variable name: its value is reported as env.visible_devices_env),
workload ({"dir", "manifest"}: a staged workload folder to verify, read only).
Output: {"checks": [{"name", "ok", "detail"}], "env": {...}, "workload_staged": bool or null}
"""

import binascii
import hashlib
import json
import os
import platform
import shutil
import socket
import stat
import subprocess
import sys


def _run(argv, timeout=20, env=None):
    try:
        out = subprocess.run(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout, env=env
        )
        return out.returncode, out.stdout.decode("utf-8", "replace").strip()
    except (OSError, subprocess.SubprocessError) as exc:
        return 127, str(exc)


def _count(n, noun):
    suffix = "" if n == 1 else ("es" if noun.endswith("s") else "s")
    return f"{n} {noun}{suffix}"


def cpu_detail(ncpu, nproc):
    """The accelerators check of a node without one: '1 CPU core for 1 process'."""
    return f"no accelerator; {_count(ncpu, 'CPU core')} for {_count(nproc, 'process')}"


def _os_name():
    try:
        with open("/etc/os-release") as fh:
            for line in fh:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return platform.platform()


def _cpu():
    model = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return model, os.cpu_count() or 1


def _mem_total():
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def _ib_ports():
    ports = []
    base = "/sys/class/infiniband"
    if not os.path.isdir(base):
        return ports
    for hca in sorted(os.listdir(base)):
        pdir = os.path.join(base, hca, "ports")
        for port in sorted(os.listdir(pdir)) if os.path.isdir(pdir) else []:
            info = {"hca": hca, "port": port}
            for key in ("state", "rate", "link_layer"):
                try:
                    with open(os.path.join(pdir, port, key)) as fh:
                        info[key] = fh.read().strip()
                except OSError:
                    info[key] = None
            ports.append(info)
    return ports


def _installed_versions():
    """torch, torchvision, pycocotools versions from package metadata: no import (fast)."""
    try:
        from importlib import metadata
    except ImportError:  # pragma: no cover - Python < 3.8
        return None, f"Python {platform.python_version()} is too old (3.8+ needed)"
    info = {}
    for name in ("torch", "torchvision", "pycocotools"):
        try:
            info[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            return None, f"{name} is not installed for {sys.executable}"
    info["device_type"] = "cpu"
    return info, None


def _torch_info():
    try:
        import torch  # noqa: F401
    except Exception as exc:  # any import failure is a finding, not a crash
        return None, f"cannot import torch with {sys.executable}: {exc}"
    info = {"torch": torch.__version__}
    try:
        import torchvision

        info["torchvision"] = torchvision.__version__
    except Exception as exc:
        return None, f"cannot import torchvision: {exc}"
    try:
        import pycocotools  # noqa: F401

        info["pycocotools"] = getattr(pycocotools, "__version__", "present")
    except Exception as exc:
        return None, f"cannot import pycocotools: {exc}"
    if torch.cuda.is_available():
        info["device_type"] = "cuda"
        info["accelerator_count"] = torch.cuda.device_count()
        info["accelerator_model"] = torch.cuda.get_device_name(0)
        props = torch.cuda.get_device_properties(0)
        info["accelerator_mem_bytes"] = int(props.total_memory)
        info["cuda"] = torch.version.cuda
    else:
        info["device_type"] = "cpu"
    return info, None


def _smi(tool):
    if not tool or shutil.which(tool) is None:
        return {"tool": tool, "present": False}
    if os.path.basename(tool) == "nvidia-smi":
        code, out = _run(
            [tool, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]
        )
        rows = [r.split(", ") for r in out.splitlines() if r.strip()] if code == 0 else []
        if rows:
            return {
                "tool": tool,
                "present": True,
                "accelerator_model": rows[0][0],
                "driver": rows[0][1] if len(rows[0]) > 1 else None,
                "accelerator_count": len(rows),
            }
    code, out = _run([tool])
    return {"tool": tool, "present": True, "summary": "\n".join(out.splitlines()[:12])}


def make_private_dir(path):
    """Create `path` and its missing parents as 0700 folders (umask can only narrow that)."""
    missing = []
    here = os.path.abspath(path)
    while not os.path.lexists(here):
        missing.append(here)
        here = os.path.dirname(here)
    for folder in reversed(missing):
        try:
            os.mkdir(folder, 0o700)
        except FileExistsError:
            pass  # made meanwhile; private_dir_problem judges whoever made it


def private_dir_problem(path, uid=None, create=True):
    """None when only `uid` (default: this process's user) can change what is in `path`: the
    folder is theirs and not writable by group or others, and no folder above it lets anyone
    else rename it (group/other-writable without the sticky bit, or sticky but owned by
    someone else); no symbolic link on the way belongs to another user. Else the problem and
    its fix, in one line. Creates the folder (0700) when it does not exist."""
    uid = os.geteuid() if uid is None else uid
    if create:
        try:
            make_private_dir(path)
        except OSError as exc:
            return f"cannot create {path}: {exc.strerror or exc}"
    link = _foreign_link(path, uid)
    if link is not None:
        return f"{link[0]} is a symbolic link owned by uid {link[1]}: remove it, {_ELSE}"
    real = os.path.realpath(path)
    try:
        st = os.stat(real)
    except OSError as exc:
        return f"cannot use {path}: {exc.strerror or exc}"
    if not stat.S_ISDIR(st.st_mode):
        return f"{path} is not a folder: remove it, {_ELSE}"
    if st.st_uid != uid:
        return f"{path} belongs to uid {st.st_uid}, not to you (uid {uid}): remove it, {_ELSE}"
    if st.st_mode & 0o022:
        mode = stat.S_IMODE(st.st_mode)
        return f"{path} is writable by group or others (mode {mode:o}): chmod go-w {real}"
    return _open_parent(real, path, uid)


_ELSE = "or set the folder to one only you can write (e.g. under your home)"


def _open_parent(real, path, uid):
    """The problem with the first folder above `real` in which others may rename entries."""
    parent = os.path.dirname(real)
    while True:
        try:
            st = os.stat(parent)
        except OSError as exc:
            return f"cannot use {path}: {parent}: {exc.strerror or exc}"
        sticky = st.st_mode & stat.S_ISVTX and st.st_uid in (0, uid)
        if st.st_mode & 0o022 and not sticky:
            mode = stat.S_IMODE(st.st_mode)
            return (
                f"{parent} (above {path}) lets others rename what is in it (mode {mode:o}): "
                f"chmod go-w {parent}, {_ELSE}"
            )
        if parent == "/":
            return None
        parent = os.path.dirname(parent)


def _foreign_link(path, uid):
    """(link, owner) of the first symbolic link on `path` owned by neither `uid` nor root."""
    here = "/"
    for part in os.path.abspath(path).split("/"):
        if not part:
            continue
        here = os.path.join(here, part)
        try:
            st = os.lstat(here)
        except OSError:
            return None
        if stat.S_ISLNK(st.st_mode) and st.st_uid not in (0, uid):
            return here, st.st_uid
        here = os.path.realpath(here)
    return None


def _check_devices(devices, env, check):
    """Which of the profile's device files exist (the orchestrator picks the optional ones
    from this), and a failed check for each needed one that does not."""
    found = {path: os.path.exists(path) for path in devices.get("look", [])}
    env["devices"] = found
    for path, remedy in devices.get("needed", []):
        ok = found.get(path, os.path.exists(path))
        check("device " + path, ok, "present" if ok else f"missing ({remedy})")


WORKDIR_ID_FILE = ".workdir-id"


def workdir_id(workdir):
    """A random id kept in the workdir, made once: two nodes that report the same id share one
    folder (one file system), and would write each other's run folders. None if unreadable."""
    path = os.path.join(workdir, WORKDIR_ID_FILE)
    try:
        with open(path) as f:
            found = f.read().strip()
        if found:
            return found
    except OSError:
        pass
    token = binascii.hexlify(os.urandom(16)).decode()
    tmp = path + "." + token + ".tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
        try:
            os.link(tmp, path)  # atomic: of two nodes making it at once, one wins
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
        with open(path) as f:
            return f.read().strip() or None
    except OSError:
        return None


def main():
    args = json.loads(sys.argv[1])
    checks = []

    def check(name, ok, detail):
        checks.append({"name": name, "ok": bool(ok), "detail": detail})

    model, ncpu = _cpu()
    env = {
        "hostname": socket.gethostname(),
        "os": _os_name(),
        "kernel": platform.release(),
        "cpu": model,
        "cpu_count": ncpu,
        "mem_total_bytes": _mem_total(),
        "python": platform.python_version(),
        "python_path": sys.executable,
        "ib": _ib_ports(),
    }
    visible_var = args.get("visible_devices_env")
    if visible_var:  # an admin's own choice of devices on this node (host runtime)
        env["visible_devices_env"] = os.environ.get(visible_var)
    docker_env = dict(os.environ)
    if args.get("docker_host"):
        docker_env["DOCKER_HOST"] = args["docker_host"]
    if shutil.which("docker"):
        code, out = _run(["docker", "version", "--format", "{{.Server.Version}}"], env=docker_env)
        env["docker"] = out if code == 0 else None
        if args.get("need_docker"):
            check("docker", code == 0, out if code == 0 else "daemon not reachable: " + out[-200:])
    else:
        env["docker"] = None
        if args.get("need_docker"):
            check("docker", False, "the docker command is not installed")

    smi = _smi(args.get("smi"))
    env["smi"] = smi
    env["driver"] = smi.get("driver")
    env["accelerator_model"] = smi.get("accelerator_model")
    env["accelerator_count"] = smi.get("accelerator_count")

    nproc = int(args.get("nproc", 1))
    if args.get("need_torch"):
        # Counting accelerators needs torch itself; a CPU-only vendor needs only the versions.
        info, problem = _torch_info() if args.get("count_accelerators") else _installed_versions()
        check(
            "torch",
            info is not None,
            problem or "torch {} torchvision {}".format(info["torch"], info["torchvision"]),
        )
        if info:
            env.update({k: info.get(k) for k in ("torch", "torchvision", "pycocotools", "cuda")})
            if info.get("device_type") == "cuda":
                env["accelerator_model"] = env["accelerator_model"] or info["accelerator_model"]
                env["accelerator_count"] = info["accelerator_count"]
                env["accelerator_mem_bytes"] = info["accelerator_mem_bytes"]
                have = info["accelerator_count"]
                check("accelerators", have >= nproc, f"{have} visible, {nproc} needed")
            else:
                env["accelerator_model"] = env["accelerator_model"] or "CPU: " + model
                env["accelerator_count"] = env["accelerator_count"] or ncpu
                check(
                    "accelerators",
                    ncpu >= nproc,
                    cpu_detail(ncpu, nproc),
                )

    data_dir = args.get("data_dir")
    if data_dir:
        missing = [
            p
            for p in (
                "train2017",
                "val2017",
                "annotations/instances_train2017.json",
                "annotations/instances_val2017.json",
            )
            if not os.path.exists(os.path.join(data_dir, p))
        ]
        check(
            "dataset",
            not missing,
            "{} ({})".format(
                data_dir, "missing " + ", ".join(missing) if missing else "COCO 2017 layout"
            ),
        )
    weights = args.get("weights")
    if weights and weights != "none":
        check(
            "weights",
            os.path.isfile(weights),
            weights + ("" if os.path.isfile(weights) else " does not exist"),
        )

    workdir = args.get("workdir") or "/tmp"
    problem = private_dir_problem(workdir)
    check("workdir", problem is None, problem or workdir + " (only you can write it)")
    if problem is None:  # else the workdir check has said why
        env["workdir_id"] = workdir_id(workdir)
        try:
            free = shutil.disk_usage(workdir).free
            need = float(args.get("min_free_gb", 1.0)) * 2**30
            check(
                "disk",
                free >= need,
                f"{free / 2**30:.1f} GiB free in {workdir}, {need / 2**30:.1f} GiB needed",
            )
        except OSError as exc:
            check("disk", False, f"cannot use workdir {workdir}: {exc}")

    hcas = args.get("ib_hcas") or []
    for hca in hcas:
        ports = [p for p in env["ib"] if p["hca"] == hca]
        active = [p for p in ports if (p.get("state") or "").endswith("ACTIVE")]
        check(
            "ib " + hca,
            bool(active),
            "{} port(s), {} active{}".format(
                len(ports),
                len(active),
                ", rate " + active[0]["rate"] if active and active[0].get("rate") else "",
            ),
        )

    _check_devices(args.get("devices") or {}, env, check)
    staged = _workload_staged(args.get("workload"))
    print(json.dumps({"checks": checks, "env": env, "workload_staged": staged}, sort_keys=True))


def _workload_staged(workload):
    """Whether the workload folder staged by an earlier run can be reused, as `sha256sum -c`
    in its folder would say: completed (.complete) and every file with the content its
    manifest line names. Read only; None when not asked."""
    if not workload:
        return None
    folder, lines = workload["dir"], workload["manifest"].splitlines()
    if not lines or not os.path.isfile(os.path.join(folder, ".complete")):
        return False
    for line in lines:
        digest, sep, rel = line.partition("  ")
        if not sep:
            return False
        try:
            with open(os.path.join(folder, rel), "rb") as f:
                if hashlib.sha256(f.read()).hexdigest() != digest:
                    return False
        except OSError:
            return False
    return True


if __name__ == "__main__":
    main()
