"""The run folder's file format (manifest.json, the ranks' JSON, logs, an imported result):
what every backend writes and the store reads. Below both `runs/` (which writes folders) and
`store/` (which ingests them), so that neither folder imports the other's way round."""
