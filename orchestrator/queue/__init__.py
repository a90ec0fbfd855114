"""The run queue: queued runs in the store, node leases, workers that execute them, and crash
recovery (reconcile). leases.py holds the store side, worker.py the side effects on nodes."""
