"""The run queue's top layer, beside the CLI: handing runs to the backends' unattended path
(enqueue.py), what a worker claims next (claims.py) and the worker loop (worker.py). The
queue's rows, leases and cancel requests are the store's (store/queue.py, store/leases.py,
store/cancel.py); the scheduling decision is pure (orchestrator/schedule.py)."""
