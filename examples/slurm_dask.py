"""Run cryopose's per-particle commands on a SLURM cluster through dask-jobqueue.

Start this on a login node (it keeps running while the command runs). It asks SLURM for
worker jobs, waits for the first ones, runs a cryopose command with ``--scheduler`` set to
the cluster's address, and releases the jobs at the end:

    python3 -m pip install dask-jobqueue
    python3 examples/slurm_dask.py --jobs 8 --cores 16 --memory 64GB --partition cpu -- \\
        validate --map run_class001.mrc --particles run_data.star --sym C4 --out val

Each SLURM job runs ``--processes`` Dask worker processes (default: one per 4 cores, each
with 4 torch threads and one task at a time); the workers need cryopose installed and the
stacks on a file system they can read (the output folder is written by this process only).
A job that SLURM kills (pre-emption, time limit) loses only the chunks it was computing:
Dask gives them to other workers, and a rerun of the same command with the same --out
resumes from the chunks already stored. Use ``--adapt MAX`` to let the cluster grow to MAX
jobs while there is work and shrink when there is none.

Alternatively start the cluster yourself (in Python or with ``dask scheduler`` and
``dask worker`` in your own batch script) and pass its address to any command:
``cryopose reconstruct particles.star --scheduler tcp://node042:8786 --out rec``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys


def main() -> int:
    parser = argparse.ArgumentParser(description="Run a cryopose command on Dask workers started as SLURM jobs.")
    parser.add_argument("--jobs", type=int, default=4, help="SLURM jobs to start (fixed size)")
    parser.add_argument(
        "--adapt", type=int, default=None, metavar="MAX", help="grow and shrink between 1 and MAX jobs instead"
    )
    parser.add_argument("--cores", type=int, default=16, help="cores per job")
    parser.add_argument("--processes", type=int, default=None, help="Dask worker processes per job [cores // 4]")
    parser.add_argument("--memory", default="64GB", help="memory per job")
    parser.add_argument("--walltime", default="04:00:00")
    parser.add_argument("--partition", default=None, help="SLURM partition (queue)")
    parser.add_argument("--account", default=None)
    parser.add_argument(
        "--gpus", type=int, default=0, help="GPUs per job (then use one process per GPU and --device cuda)"
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the cryopose command and its options")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the cryopose command after --")

    from dask_jobqueue import SLURMCluster  # pip install dask-jobqueue

    from cryopose.jobs.allocator import allocator_environment

    processes = args.processes or max(1, args.cores // 4)
    extra = [f"--gres=gpu:{args.gpus}"] if args.gpus else []
    cluster = SLURMCluster(
        cores=args.cores,
        processes=processes,
        memory=args.memory,
        walltime=args.walltime,
        queue=args.partition,
        account=args.account,
        job_extra_directives=extra,
        # one Dask thread per process: each task gets cores/processes torch threads
        worker_extra_args=["--nthreads", "1"],
        # cryopose's malloc settings from the start (cryopose.jobs.allocator; they also replace
        # the MALLOC_TRIM_THRESHOLD_ that Dask's nanny would set, which slows the kernels)
        job_script_prologue=[
            f"export CRYOPOSE_TORCH_THREADS={max(1, args.cores // processes)}",
            *(f"export {name}={value}" for name, value in allocator_environment({}).items()),
        ],
    )
    try:
        if args.adapt:
            cluster.adapt(minimum_jobs=1, maximum_jobs=args.adapt)
        else:
            cluster.scale(jobs=args.jobs)
        print(cluster.job_script(), file=sys.stderr)
        from distributed import Client

        with Client(cluster) as client:
            client.wait_for_workers(1, timeout=3600)  # the queue may be long; chunks start as workers arrive
        run = [sys.executable, "-m", "cryopose", *command, "--scheduler", cluster.scheduler_address]
        print("running:", " ".join(run), file=sys.stderr)
        return subprocess.call(run)
    finally:
        cluster.close()


if __name__ == "__main__":
    sys.exit(main())
