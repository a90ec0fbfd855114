"""A stand-in for the docker CLI, for unit tests of the relay agent without a daemon:

    python3 fake_docker.py STATE_DIR load               stdin -> STATE_DIR/load-N.tar; a complete
                                                        save stream "loads" its config's image id
    python3 fake_docker.py STATE_DIR image ls --all --quiet --no-trunc
    python3 fake_docker.py STATE_DIR image inspect --format {{.Id}} ID-OR-TAG
    python3 fake_docker.py STATE_DIR image inspect --format {{json .RootFS.Layers}} ID...
    python3 fake_docker.py STATE_DIR tag ID TAG

STATE_DIR/images.json maps each loaded image id to its diff ids (write it to give the daemon
images beforehand), STATE_DIR/tags lists "ID TAG" lines. A killed load leaves its tar, no image.
A file STATE_DIR/down makes every command fail as a stopped daemon would.
"""

import hashlib
import json
import sys
import tarfile
from pathlib import Path


def load(state: Path, images: dict) -> int:
    target = state / f"load-{len(list(state.glob('load-*.tar')))}.tar"
    with open(target, "wb") as out:
        while True:
            data = sys.stdin.buffer.read1(1 << 16)
            if not data:
                break
            out.write(data)
            out.flush()
    try:
        with tarfile.open(target) as tar:
            manifest = json.loads(tar.extractfile("manifest.json").read())[0]
            config = tar.extractfile(manifest["Config"]).read()
    except (tarfile.TarError, KeyError, AttributeError) as exc:
        print(f"Error processing tar file: {exc}")
        return 1
    image = "sha256:" + hashlib.sha256(config).hexdigest()
    images[image] = json.loads(config)["rootfs"]["diff_ids"]
    (state / "images.json").write_text(json.dumps(images))
    print(f"Loaded image ID: {image}")
    return 0


def main() -> int:
    state, args = Path(sys.argv[1]), sys.argv[2:]
    if (state / "down").exists():
        print("Cannot connect to the Docker daemon at unix:///fake.sock", file=sys.stderr)
        return 1
    images = (
        json.loads((state / "images.json").read_text()) if (state / "images.json").exists() else {}
    )
    tags_file = state / "tags"
    tags = (
        dict(reversed(line.split()) for line in tags_file.read_text().splitlines())
        if tags_file.exists()
        else {}
    )
    if args[0] == "load":
        return load(state, images)
    if args[:2] == ["image", "ls"]:
        print("\n".join(images))
        return 0
    if args[:2] == ["image", "inspect"]:
        for ref in args[4:]:
            image = tags.get(ref, ref)
            if image not in images:
                print(f"Error: No such image: {ref}", file=sys.stderr)
                return 1
            print(image if args[3] == "{{.Id}}" else json.dumps(images[image]))
        return 0
    if args[0] == "tag":
        with open(tags_file, "a") as out:
            out.write(f"{args[1]} {args[2]}\n")
        return 0
    print(f"fake docker: unknown command {args}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
