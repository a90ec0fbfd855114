"""Runs in the batch script (staged next to the node probe; standard library only, Python
3.8+): reads every node's probe output and exits 3, naming each failed check, when any failed,
so torchrun never starts on a node that is not ready."""

import json
import os
import sys


def main():
    bad = []
    for path in sys.argv[1:]:
        name = os.path.basename(path)
        with open(path) as fh:
            lines = fh.read().strip().splitlines()
        try:
            checks = json.loads(lines[-1])["checks"]
        except (IndexError, ValueError, KeyError):
            bad.append(f"{name}: probe: unreadable output")
            continue
        for check in checks:
            if not check.get("ok"):
                bad.append("{}: {}: {}".format(name, check.get("name"), check.get("detail")))
    for line in bad:
        print("preflight failed: " + line, file=sys.stderr)
    sys.exit(3 if bad else 0)


if __name__ == "__main__":
    main()
