"""Code that runs inside the vendor images (Python 3.8+, torch 2.0+). Never imports `orchestrator`."""
