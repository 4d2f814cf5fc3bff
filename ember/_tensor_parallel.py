"""Starting a tensor-parallel LLM: rank 0 (the engine's process) and its workers, one
process per shard (runtime/distributed.py has the protocol; passes/shard_tensor_parallel.py
the sharding).

`ember.LLM(model, tensor_parallel_size=N)` starts N-1 worker processes on this machine
(`python -m ember._tensor_parallel`, so a user's script is never re-imported) and meets
them at a TCPStore it hosts on a free loopback port. Under torchrun — or any launcher that
sets MASTER_ADDR, MASTER_PORT, RANK and WORLD_SIZE — every rank runs the same command: rank
0 becomes the engine, and `ember.LLM(...)` (or `ember serve`) on any other rank serves as
that rank's worker and exits the process when rank 0 stops the group. docs/distributed.md
shows both.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from .errors import InputError, UnsupportedError
from .runtime.distributed import Group, Rendezvous, exit_with_parent, worker_loop
from .runtime.engine import EngineOptions, LLMEngine
from .runtime.model_runner import ModelRunner


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def threads_per_rank(local_ranks: int) -> int:
    """The cores a rank may use: this machine's, shared by the `local_ranks` on it."""
    return max(1, _cores() // local_ranks)


def start(path: Path, size: int, compile_options: dict, engine_options: EngineOptions, progress: bool | None):
    """(rank 0) Start or join the group of `size` ranks, compile rank 0's shard and wait for
    every rank's; returns (rank 0's compiled model, the joined Group)."""
    import torch.distributed as dist

    if dist.is_initialized():  # (before any worker starts)
        raise InputError("this process already has a torch.distributed default group (another tensor-parallel "
                         "LLM's, or its own): ember makes the group of its ranks; shut the other LLM down first")
    if compile_options.get("target", "cpu") != "cpu":
        raise UnsupportedError("tensor parallelism runs on the cpu target (gloo) for now: one process per GPU "
                               "over NCCL is not wired up yet")
    rendezvous = Rendezvous.from_env()
    spawn = rendezvous is None
    if not spawn and rendezvous.size != size:
        raise InputError(f"tensor_parallel_size is {size}, but this process was launched as one of "
                         f"WORLD_SIZE={rendezvous.size} ranks")
    local = size if spawn else int(os.environ.get("LOCAL_WORLD_SIZE", size))
    options = {**compile_options,
               "intra_op_threads": compile_options.get("intra_op_threads") or threads_per_rank(local)}
    if not spawn and rendezvous.rank != 0:
        run_worker(rendezvous, path, options)
        raise SystemExit(0)  # a worker's process ends with its group
    if spawn:
        rendezvous = Rendezvous("127.0.0.1", _free_port(), 0, size)
    group = Group(rendezvous, rendezvous.store())
    try:
        if spawn:
            group.processes = _spawn(rendezvous, path, options)
        from .llm import compile_llm

        compiled = compile_llm(path, **options, progress=progress, tensor_parallel=(0, size))
        group.wait_ready()
        group.go({"num_blocks": LLMEngine.num_blocks(compiled, engine_options)})  # (every rank's: same shapes)
        group.join()
    except BaseException as e:
        group.abort(e)
        group.failed = group.failed or e
        group.shutdown()
        raise
    return compiled, group


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(rendezvous: Rendezvous, path: Path, options: dict) -> dict:
    processes = {}
    for rank in range(1, rendezvous.size):
        spec = {"rendezvous": {"host": rendezvous.host, "port": rendezvous.port, "rank": rank,
                               "size": rendezvous.size},
                "model": str(path), "compile": options, "parent": os.getpid()}
        processes[rank] = subprocess.Popen([sys.executable, "-m", "ember._tensor_parallel", json.dumps(spec)])
    return processes


def run_worker(rendezvous: Rendezvous, path: Path, options: dict) -> None:
    """(a worker) Build this rank's shard, report it, join the group and run every step
    rank 0 sends until it stops the group."""
    from .llm import compile_llm

    group = Group(rendezvous, rendezvous.store())
    try:
        compiled = compile_llm(path, **options, progress=False, tensor_parallel=(rendezvous.rank, rendezvous.size),
                               tokenizer=False)
    except BaseException as e:
        group.report(e)
        raise
    group.report(None)
    config = group.wait_go()
    group.join()
    try:
        runner = ModelRunner(compiled, config["num_blocks"], enforce_eager=True)
        worker_loop(group, runner.run)
    finally:
        group.leave()


def main(argv: list[str]) -> int:
    spec = json.loads(argv[0])
    exit_with_parent(spec["parent"])
    try:
        run_worker(Rendezvous(**spec["rendezvous"]), Path(spec["model"]), spec["compile"])
    except Exception as e:
        print(f"ember: tensor-parallel rank {spec['rendezvous']['rank']}: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
