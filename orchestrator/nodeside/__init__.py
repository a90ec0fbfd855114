"""Scripts that run on the nodes, sent as `python -c` or staged as files: node_probe (preflight),
monitor_probe (the sampler), probe_check (Slurm's gate over the probes) and relay_agent (the image
relay). Standard library only, Python 3.8 (vermin checks it), and nothing from `orchestrator`:
scripts/check_import_cycles.py refuses an import of the package here."""
