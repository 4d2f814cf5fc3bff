"""Tensor-parallel ranks on torch.distributed: the start-up handshake, the step channel
from rank 0 to the workers, and the workers' loop.

Rank 0 runs the engine (scheduler, sampler, detokenizers); every rank holds its shard of
the weights and of the KV cache and runs its own compiled Program, whose ember.AllReduce
/ AllGather steps meet the other ranks' (ir/ops/collectives.py). Each step, rank 0
broadcasts the step's flattened inputs (`StepChannel`: one header and one int64 buffer,
arrays, never request objects) and every rank runs the same forward step on them.

Start-up goes through a key-value store (torch.distributed's TCPStore): each rank builds
its shard, then writes `status/<rank>` ("ok" or its error); rank 0 waits for all of them
— watching the processes it started, so a rank that dies is reported with its exit code
at once — and writes `go` with the KV cache's block count; then every rank joins the
process group (gloo on a CPU, NCCL on GPUs). A start-up error on any rank reaches the
user with the rank named.

Faults: the model's collectives run on the default group with a bounded timeout
(`EMBER_TP_TIMEOUT`, 20 s), so a worker that dies (its connection closes) or hangs (the
timeout) fails rank 0's step within that time; the group is then `failed` and the engine
fails every request. The step headers go over a second group with a long timeout: an
idle worker waits for work without timing out. A worker whose step fails writes
`error/<rank>` to the store and exits; one whose rank 0 is gone exits too.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import subprocess
import threading
import time
from dataclasses import dataclass

import numpy as np

from ..errors import ExecutionError, ModelError

log = logging.getLogger("ember.runtime")

STEP_FEEDS = ("input_ids", "positions", "slot_mapping", "block_tables", "query_start_loc", "seq_lens",
              "logit_indices")  # a step's inputs, in the channel's order
_STOP, _STEP = 0, 1
DEFAULT_TIMEOUT_S = 20.0
STARTUP_TIMEOUT_S = 900.0


def step_timeout() -> float:
    """Seconds a rank waits in one of the model's collectives (EMBER_TP_TIMEOUT)."""
    try:
        return float(os.environ.get("EMBER_TP_TIMEOUT", DEFAULT_TIMEOUT_S))
    except ValueError:
        raise ModelError(f"EMBER_TP_TIMEOUT={os.environ['EMBER_TP_TIMEOUT']!r} is not a number of seconds") from None


@dataclass(frozen=True)
class Rendezvous:
    """Where the ranks meet: the store's address, this rank, the group's size."""

    host: str
    port: int
    rank: int
    size: int
    agent_store: bool = False  # torchrun's agent hosts the store (every rank is its client)

    @classmethod
    def from_env(cls) -> "Rendezvous | None":
        """The torchrun (or MASTER_ADDR/MASTER_PORT/RANK/WORLD_SIZE) rendezvous this
        process was started in, or None."""
        env = os.environ
        if "RANK" not in env or "WORLD_SIZE" not in env:
            return None
        try:
            return cls(env.get("MASTER_ADDR", "127.0.0.1"), int(env.get("MASTER_PORT", "29500")), int(env["RANK"]),
                       int(env["WORLD_SIZE"]), env.get("TORCHELASTIC_USE_AGENT_STORE") == "True")
        except ValueError as e:
            raise ModelError(f"the rendezvous environment (RANK, WORLD_SIZE, MASTER_PORT) is not numbers: {e}") from None

    def store(self, timeout: float = STARTUP_TIMEOUT_S):
        from torch.distributed import PrefixStore, TCPStore

        master = self.rank == 0 and not self.agent_store
        try:
            store = TCPStore(self.host, self.port, self.size if master else None, master,
                             timeout=datetime.timedelta(seconds=timeout), wait_for_workers=False)
        except (RuntimeError, OSError) as e:
            raise ModelError(f"rank {self.rank}: cannot reach the rendezvous at {self.host}:{self.port}: {e}") from None
        return PrefixStore("ember-tp", store)


def _backend(device) -> str:
    return "nccl" if str(device).startswith("cuda") else "gloo"


class Group:
    """This process's place in a tensor-parallel group: rank, size, the store, and (once
    `join`ed) torch.distributed's default group plus the step channel's group."""

    def __init__(self, rendezvous: Rendezvous, store):
        self.rank, self.size, self.store = rendezvous.rank, rendezvous.size, store
        self.processes: dict = {}  # rank -> the subprocess.Popen of a worker rank 0 started
        self.control = None
        self.failed: BaseException | None = None
        self.closed = False
        self._failure = ""  # what failed, as it was when it did
        self._lock = threading.Lock()

    # -- start-up ---------------------------------------------------------------------------
    def report(self, error: BaseException | None) -> None:
        """This rank's start-up status (None: its shard is ready)."""
        self.store.set(f"status/{self.rank}", "ok" if error is None else f"{type(error).__name__}: {error}")

    def wait_ready(self, timeout: float = STARTUP_TIMEOUT_S) -> None:
        """(rank 0) Every other rank's start-up status; a ModelError naming each rank that
        failed or died."""
        pending, errors = set(range(1, self.size)), []
        deadline = time.monotonic() + timeout
        while pending:
            for r in sorted(pending):
                if self.store.check([f"status/{r}"]):
                    status = self.store.get(f"status/{r}").decode()
                    pending.discard(r)
                    if status != "ok":
                        errors.append(f"rank {r}: {status}")
                elif r in self.processes and self.processes[r].poll() is not None:
                    pending.discard(r)
                    errors.append(f"rank {r} exited with code {self.processes[r].returncode} while loading its shard")
            if errors:
                break
            if time.monotonic() > deadline:
                errors.append(f"rank(s) {sorted(pending)} did not report within {timeout:g} s")
                break
            time.sleep(0.05)
        if errors:
            raise ModelError("tensor parallelism: start-up failed on " + "; ".join(errors))

    def go(self, config: dict) -> None:
        """(rank 0) Let the workers on, with `config` (JSON)."""
        self.store.set("go", json.dumps(config))

    def abort(self, error: BaseException) -> None:
        """(rank 0) Start-up failed here: the workers waiting for `go` get the error instead."""
        try:
            self.store.set("go", json.dumps({"error": f"rank 0 failed to start: {type(error).__name__}: {error}"}))
        except Exception:  # (a store that is gone: the workers see it close)
            pass

    def wait_go(self) -> dict:
        """(a worker) What rank 0 sent with `go`; a ModelError if rank 0 failed to start."""
        config = json.loads(self.store.get("go").decode())
        if "error" in config:
            raise ModelError(f"tensor parallelism: {config['error']}")
        return config

    def join(self, device=None) -> None:
        """Join torch.distributed's default group (and the step channel's)."""
        import torch.distributed as dist

        if dist.is_initialized():
            raise ModelError("tensor parallelism: this process already has a torch.distributed default group (another "
                             "tensor-parallel LLM's, or its own): ember makes the group of its ranks, one per process")
        timeout = datetime.timedelta(seconds=step_timeout())
        dist.init_process_group(_backend(device), store=self.store, rank=self.rank, world_size=self.size,
                                timeout=timeout)
        self.control = dist.new_group(backend="gloo", timeout=datetime.timedelta(days=7))

    # -- steps ------------------------------------------------------------------------------
    def send_step(self, feeds: dict[str, np.ndarray]) -> None:
        """(rank 0) Broadcast a step's inputs to the workers."""
        if self.failed is not None:
            raise self.error()
        arrays = [np.ascontiguousarray(feeds[name], np.int64).reshape(-1) for name in STEP_FEEDS]
        n, b = len(feeds["input_ids"]), len(feeds["seq_lens"])
        width = feeds["block_tables"].shape[1] if b else 0
        header = np.array([_STEP, n, b, width, len(feeds["logit_indices"])], np.int64)
        self._broadcast(header, np.concatenate(arrays))

    def receive(self) -> dict[str, np.ndarray] | None:
        """(a worker) The next step's inputs, or None when rank 0 stops the group."""
        import torch
        import torch.distributed as dist

        header = torch.zeros(5, dtype=torch.int64)
        dist.broadcast(header, 0, group=self.control)
        cmd, n, b, width, logits = (int(v) for v in header)
        if cmd == _STOP:
            return None
        sizes = {"input_ids": n, "positions": n, "slot_mapping": n, "block_tables": b * width,
                 "query_start_loc": b + 1, "seq_lens": b, "logit_indices": logits}
        flat = torch.zeros(sum(sizes.values()), dtype=torch.int64)
        dist.broadcast(flat, 0, group=self.control)
        flat, feeds, at = flat.numpy(), {}, 0
        for name in STEP_FEEDS:
            feeds[name] = flat[at:at + sizes[name]]
            at += sizes[name]
        feeds["block_tables"] = feeds["block_tables"].reshape(b, width)
        return feeds

    def _broadcast(self, header: np.ndarray, payload: np.ndarray | None) -> None:
        import torch
        import torch.distributed as dist

        # (asynchronous, waited on for the step timeout: the channel's group has a long one, for
        # the workers that wait on it while idle, and a stopped worker must not hang rank 0)
        timeout = datetime.timedelta(seconds=step_timeout())
        with self._lock:
            for array in (header, payload):
                if array is not None:
                    dist.broadcast(torch.from_numpy(array), 0, group=self.control, async_op=True).wait(timeout)

    def fail(self, cause: BaseException) -> ExecutionError:
        """(rank 0) Mark the group broken by `cause` (a step's collective that failed or
        timed out); the error that names what happened to the workers."""
        if self.failed is None:
            self.failed = cause
            deadline = time.monotonic() + 1.0  # a worker that died: its exit code, where it shows shortly
            while time.monotonic() < deadline and all(p.poll() is None for p in self.processes.values()):
                time.sleep(0.02)
            self._failure = self.describe_failure()
            for process in self.processes.values():  # the group cannot run again: end the others now
                if process.poll() is None:
                    process.kill()
        return self.error()

    def error(self) -> ExecutionError:
        return ExecutionError(f"tensor parallelism: {self._failure or self.describe_failure()}")

    def describe_failure(self) -> str:
        causes = []
        for r in range(1, self.size):
            process = self.processes.get(r)
            try:
                if self.store.check([f"error/{r}"]):
                    causes.append(f"rank {r} failed: {self.store.get(f'error/{r}').decode()}")
                    continue
            except Exception:  # the store went with rank 0's group: say what is known
                pass
            if process is not None and process.poll() is not None:
                causes.append(f"worker rank {r} died (exit code {process.returncode})")
        if not causes:
            causes.append(f"a worker did not answer within {step_timeout():g} s (EMBER_TP_TIMEOUT) or its "
                          f"connection broke ({type(self.failed).__name__}: {self.failed})")
        return "; ".join(causes) + "; the engine has stopped"

    # -- the end ----------------------------------------------------------------------------
    def leave(self) -> None:
        """Close the process group (a worker's threads must not outlive the interpreter:
        torchrun's agents wait for each other's ranks to exit cleanly; rank 0 may start
        another group, after a broken one too)."""
        import torch.distributed as dist

        if dist.is_initialized():
            try:
                dist.destroy_process_group()
            except Exception as e:  # (a peer is gone: nothing to close with)
                log.warning("ember: rank %d: the tensor-parallel group did not close cleanly: %s", self.rank, e)

    def shutdown(self, timeout: float = 10.0) -> None:
        """(rank 0) Stop the workers and wait for them; kill any that do not exit. Leaves
        no process behind."""
        if self.closed:
            return
        self.closed = True
        if self.control is not None and self.failed is None:
            try:
                self._broadcast(np.array([_STOP, 0, 0, 0, 0], np.int64), None)
            except Exception as e:  # a broken group: the processes are ended below
                log.warning("ember: could not stop the tensor-parallel workers in order: %s", e)
        deadline = time.monotonic() + (timeout if self.failed is None else 0)  # (a broken group: at once)
        for process in self.processes.values():
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        self.processes = {}
        if self.control is not None:
            self.leave()


def worker_loop(group: Group, run) -> None:
    """(a worker) Run `run(feeds)` for every step rank 0 broadcasts, until it stops the
    group. A failed step is written to the store (rank 0 names it) and re-raised."""
    while True:
        feeds = group.receive()
        if feeds is None:
            return
        try:
            run(feeds)
        except BaseException as e:
            try:
                group.store.set(f"error/{group.rank}", f"{type(e).__name__}: {e}")
            finally:
                raise


def exit_with_parent(parent: int) -> None:
    """(a worker rank 0 started) Exit when rank 0's process is gone, whatever this one is
    waiting on (a daemon thread that polls the parent's pid)."""
    def watch():
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(3)

    threading.Thread(target=watch, name="ember-tp-parent", daemon=True).start()
