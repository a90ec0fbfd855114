"""The Slurm backend: the same submission, scheduled by the lab's Slurm.

settings.py (the [slurm] table, pure), script.py (the sbatch script and command, pure),
commands.py (every call to sbatch/scontrol/sacct/scancel: the side effects), execute.py (one
run's lifecycle, publishing like the SSH backend).
"""
