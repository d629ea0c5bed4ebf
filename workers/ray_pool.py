"""Ray execution: one actor per GPU (or per CPU slot), each loading the teacher once and committing shards.

The driver hands out one shard at a time to idle actors. An actor that dies (OOM kill, lost node) is replaced
and its shard retried, up to ``max_attempts`` per shard; an exception raised while computing a shard is retried
the same way. After that the job fails naming the shard and the last cause; committed shards stay.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections import deque
from pathlib import Path
from typing import Any

from logitstore.errors import InvalidInputError
from logitstore.manifest import ShardInfo, TeacherInfo, write_atomic
from logitstore.spec import Spec
from logitstore.workers.config import PrecomputeConfig
from logitstore.workers.corpus import PackedCorpus, SequenceReader
from logitstore.workers.shard import ShardTask, compute_shard, maybe_die_for_test


class ShardWorker:
    """The actor body: holds the teacher and the corpus map; :meth:`run` computes and commits one shard."""

    def __init__(self, config: dict[str, Any], root: str, job_dir: str, threads: int):
        import torch

        from logitstore.workers.teachers import load_teacher

        if threads > 0:
            torch.set_num_threads(threads)
        self.spec = Spec.from_dict(config["spec"])
        self.config = config
        self.root = Path(root)
        self.job_dir = Path(job_dir)
        self.teacher = load_teacher(config["teacher"])
        self.corpus = SequenceReader(self.job_dir / "corpus")
        info = TeacherInfo(
            name=self.teacher.name,
            vocab_size=self.teacher.vocab_size,
            revision=self.teacher.revision,
            dtype=self.teacher.dtype,
        )
        write_atomic(self.job_dir / "teacher.json", json.dumps(info.to_dict()).encode())

    def run(self, task: ShardTask, attempt: int) -> dict[str, Any]:
        maybe_die_for_test(task.index, attempt)
        info = compute_shard(
            task,
            teacher=self.teacher,
            corpus=self.corpus,
            spec=self.spec,
            backend=self.config["backend"],
            root=self.root,
            job_dir=self.job_dir,
            batch_size=self.config["batch_size"],
            audit_fraction=float(self.config.get("audit_fraction") or 0.0),
        )
        return info.to_dict()


def run_shards(
    config: PrecomputeConfig, todo: list[ShardTask], *, root: Path, job_dir: Path, corpus: PackedCorpus
) -> dict[int, ShardInfo]:
    import ray

    from logitstore.workers.job import JobFailedError

    started_here = _ensure_ray(config)
    spawned: list[Any] = []
    try:
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        cpus = int(resources.get("CPU", 1))
        # Each actor holds its slot for the whole job, so more actors than slots would wait forever.
        slots = gpus if gpus else cpus
        if config.num_workers is not None and config.num_workers > slots:
            raise InvalidInputError(
                f"--num-workers {config.num_workers} exceeds the {slots} {'GPU' if gpus else 'CPU'}(s) of the Ray "
                f"cluster; each worker holds one for the whole job: use --num-workers {slots} or fewer"
            )
        if gpus:
            n_actors = min(config.num_workers or gpus, len(todo))
            options: dict[str, Any] = {"num_gpus": 1, "num_cpus": 1}
            threads = 0
        else:
            n_actors = min(config.num_workers or 1, len(todo))
            options = {"num_cpus": 1}
            threads = max(1, cpus // max(1, n_actors))
        env = {k: v for k, v in os.environ.items() if k in ("LOGITSTORE_TEST_KILL_SHARD",)}
        env["PYTHONPATH"] = os.pathsep.join(p for p in [os.getcwd(), *sys.path] if p and os.path.isdir(p))
        actor_cls = ray.remote(max_restarts=0, max_task_retries=0)(ShardWorker)
        spawn_args = (config.to_dict(), str(root), str(job_dir), threads)

        def spawn() -> Any:
            return actor_cls.options(**options, runtime_env={"env_vars": env}).remote(*spawn_args)

        def spawn_tracked() -> Any:
            actor = spawn()
            spawned.append(actor)
            return actor

        idle = deque(spawn_tracked() for _ in range(n_actors))
        queue = deque((task, 0) for task in todo)
        in_flight: dict[Any, tuple[Any, ShardTask, int]] = {}
        done: dict[int, ShardInfo] = {}
        offsets = SequenceReader(corpus.directory).offsets
        todo_tokens = sum(int(offsets[t.first_seq + t.num_sequences] - offsets[t.first_seq]) for t in todo)
        progress = _Progress(todo_tokens, enabled=config.progress)
        while queue or in_flight:
            while queue and idle:
                task, attempt = queue.popleft()
                actor = idle.popleft()
                in_flight[actor.run.remote(task, attempt)] = (actor, task, attempt)
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            ref = ready[0]
            actor, task, attempt = in_flight.pop(ref)
            try:
                info = ShardInfo.from_dict(ray.get(ref))
            except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError) as exc:
                died = isinstance(exc, ray.exceptions.RayActorError)
                cause = _describe(exc)
                if attempt + 1 >= config.max_attempts:
                    progress.close()
                    raise JobFailedError(
                        f"shard {task.index} (sequences {task.first_seq}..{task.first_seq + task.num_sequences - 1}) "
                        f"failed {attempt + 1} time(s); last cause: {cause}. Committed shards are kept: fix the cause "
                        "and re-run the same command to resume"
                    ) from None
                if died:
                    ray.kill(actor, no_restart=True)
                    actor = spawn_tracked()
                queue.append((task, attempt + 1))
                idle.append(actor)
                continue
            done[task.index] = info
            idle.append(actor)
            progress.update(info.num_tokens, len(done), len(todo))
        progress.close()
        return done
    finally:
        # On success, failure or Ctrl-C: no actor may outlive the job (it would hold a GPU and keep writing).
        for actor in spawned:
            with contextlib.suppress(Exception):  # already dead
                ray.kill(actor, no_restart=True)
        if started_here:
            ray.shutdown()


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    last = next((line for line in reversed(text) if line.strip()), type(exc).__name__)
    return f"{type(exc).__name__}: {last.strip()}"


def _ensure_ray(config: PrecomputeConfig) -> bool:
    import ray

    if ray.is_initialized():
        return False
    if config.ray_address:
        try:
            ray.init(address=config.ray_address, log_to_driver=False)
        except Exception as exc:  # noqa: BLE001 -- ray raises ConnectionError, ValueError, RuntimeError...
            raise InvalidInputError(
                f"cannot join the Ray cluster at --ray-address {config.ray_address!r}: {exc}; check the address "
                "(`ray status` on the head node prints it) or omit the flag to run on this machine"
            ) from None
    else:
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    return True


class _Progress:
    """tqdm over tokens (rate and ETA), updated as shards commit."""

    def __init__(self, total: int, *, enabled: bool):
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, unit="tok", unit_scale=True, desc="precompute", dynamic_ncols=True)

    def update(self, tokens: int, shards_done: int, shards_total: int) -> None:
        if self.bar is not None:
            self.bar.update(tokens)
            self.bar.set_postfix_str(f"shards {shards_done}/{shards_total}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
