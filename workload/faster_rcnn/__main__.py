"""`python -m workload.faster_rcnn ...` (usually via torchrun). The clock starts here, before
torch is imported, so e2e_time and init time include the imports."""

import time

_STARTED_UNIX = time.time()
_STARTED_PERF = time.perf_counter()

if __name__ == "__main__":
    import sys

    from workload.faster_rcnn.runner import main

    sys.exit(main(started_unix=_STARTED_UNIX, started_perf=_STARTED_PERF))
