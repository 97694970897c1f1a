"""Running a grid beyond one process: Ray tasks (``grid --ray``) or Slurm jobs through submitit (``grid --slurm``).

Both backends take the grid's unfinished cells and their stage-sharing plan (:mod:`tuneguard.gridexec.plan`):
the stages that several cells share run first, each as one task (job) of its own, and each cell runs after the
shared stages of its chain. The stage store stays the grid's ``output_dir``, a directory every worker mounts;
cell records (``cells/<id>.json``) and the results store are those of the serial ``grid``, so a grid can be
started on one engine and finished on another, or serially.

Modules: ``settings`` (the grid file's ``resources:``/``slurm:`` keys), ``plan`` (which stages are shared),
``executor`` (the interface), ``ray_backend``, ``slurm_backend``.
"""
