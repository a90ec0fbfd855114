"""Exchanging runs with other tools: MLPerf logging files out (mllog.py), FlagPerf's result logs
in (flagperf.py parses them, flagperf_folder.py makes run folders of them). Pure logic: the
commands in orchestrator/cli/ read and write the store through its API."""
