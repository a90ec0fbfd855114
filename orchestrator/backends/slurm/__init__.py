"""The Slurm backend: the same submission, scheduled by the lab's Slurm.

The [slurm] table is parsed by the core (orchestrator/slurm_settings.py). plan.py (the plan and
the manifest) and script.py (the sbatch script and command) are pure; commands.py holds every
call to sbatch/scontrol/sacct/scancel (the side effects); stage.py stages and submits, follow.py
follows a job one step per Slurm state, collect.py brings its folder home and says how it
ended, execute.py runs one foreground submit, followers.py is the worker's side.
"""
