"""The Ray executor (issue 11): each (entry, seed) a Ray task, on a local Ray instance or a cluster.

Convention chosen for shared stages: the **content-addressed stage cache on a shared filesystem**,
not Ray's object store. Stage outputs are folders (model weights, patch stores of many files) that
later commands (`bench report`, `bench predict`, a resumed suite) read from ``results/cache``; the
object store would hold them only while the cluster lives. So the results folder must be visible
at the same absolute path on the driver and on every node (NFS, Lustre, BeeGFS, a CephFS mount;
one machine trivially).

* Shared stages computed once and awaited: the driver plans every run (stage keys, what is cached)
  before it submits anything. The first run needing an uncached stage key is its producer; a run
  whose stages another run produces is submitted only when that producer has finished (done or
  failed for good), so it then finds the stage cached and waits holding no GPU. Each key is also
  computed under a file lock (bench.executors.locking), so runs that still meet (two drivers, a
  retry) compute it once: one computes, the others block and reuse.
* Resources: a task asks for ``num_gpus=1`` when the run's device is cuda (``1/runs_per_gpu`` with
  ``--runs-per-gpu N``: N runs share each GPU, Ray's fractional GPUs, for runs that leave a large
  GPU idle, e.g. the small segmentation and baseline trainings; their memory must fit together), else
  ``num_cpus=cpus_per_task`` (Ray sets ``OMP_NUM_THREADS`` to the task's CPUs); ``--device auto``
  means cuda when the cluster has GPUs, cpu otherwise (the config keeps ``auto``, so run keys are
  those of the local executor, and a suite begun locally resumes on Ray and back).
* Failures isolated and retried: a failed run (an exception, recorded in ``seed<k>.failed``) or a
  lost task (worker crash, node loss; Ray's own ``max_retries`` is 0) is resubmitted `retries`
  times (default once); other runs go on.
* Same numbers as local: a worker rebuilds the runner from :class:`bench.runner.RunnerSpec` and
  executes the same :meth:`Runner.execute_one`; MLflow is written by the driver only.
* Progress: a tqdm bar over finished runs on the driver (running count and retries shown).
* Cross-validation: ``bench run --folds K --executor ray`` submits the runs of every fold at once
  (:meth:`RayExecutor.execute_runs`); the stages the folds share (segmentation, patches, SSL
  pretraining but SupCon's) are produced once and the K probes then run side by side.
"""
from __future__ import annotations

import socket
import sys
import time
import traceback
from typing import TYPE_CHECKING, Any, Sequence

from bench.errors import BenchError, brief

if TYPE_CHECKING:  # pragma: no cover
    from bench.registry import Entry
    from bench.runner import Outcome, PlannedRun, Runner, RunnerSpec

_RUNNERS: dict[Any, Any] = {}          # worker side: one runner per spec (datasets opened once)


def import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise BenchError("--executor ray needs Ray, which is not installed: pip install 'osteobench[cluster]' "
                         "(or pip install ray) on the driver and on every node") from exc
    return ray


def run_task(spec: "RunnerSpec", entry_name: str, seed: int) -> "Outcome":
    """Worker side of one task: rebuild the runner, execute the run, return its outcome."""
    from bench import registry

    started = time.time()
    try:
        registry.load_entries(spec.plugins)
        runner = _RUNNERS.get(spec)
        if runner is None:
            runner = _RUNNERS[spec] = spec.build()
        return runner.execute_one(registry.get(entry_name), seed)
    except Exception as exc:  # setup failed (a plugin not importable on this node, ...)
        return spec.build().failed(entry_name, seed, exc, traceback.format_exc(), started)


class RayExecutor:
    """Submits runs as Ray tasks (module docstring)."""

    name = "ray"

    def __init__(self, address: str | None = None, retries: int = 1, cpus_per_task: float = 1.0,
                 runs_per_gpu: int = 1):
        self.address = address or None       # None: RAY_ADDRESS, a `ray start` cluster here, or a new instance
        self.retries = retries               # extra attempts of a failed or lost run
        self.cpus_per_task = cpus_per_task   # CPUs per task (and per GPU task)
        self.runs_per_gpu = runs_per_gpu     # GPU tasks sharing one GPU (each asks for 1/runs_per_gpu)
        self.ray: Any = None
        self.owned = False                   # whether this executor started the Ray session
        self.gpus = 0.0

    # ------------------------------------------------------------------ connection
    def connect(self) -> Any:
        if self.ray is not None:
            return self.ray
        ray = import_ray()
        if not ray.is_initialized():
            import logging

            try:
                ray.init(address=self.address, logging_level=logging.WARNING, log_to_driver=True)
            except Exception as exc:
                where = self.address or "a new local Ray instance"
                hint = (" (ray:// needs the Ray client: pip install 'ray[client]')" if str(self.address or "")
                        .startswith("ray://") else "")
                raise BenchError(f"cannot connect to Ray at {where}: {brief(exc)}{hint}. Start a "
                                 "cluster with `ray start --head` and pass --address auto (on a node of it) or "
                                 "--address <head>:6379, or leave --address out for a local Ray instance. A cluster "
                                 "with token authentication (`ray start`'s default in recent Ray) also needs "
                                 "RAY_AUTH_MODE=token and its token in ~/.ray/auth_token or RAY_AUTH_TOKEN") from exc
            self.owned = True
        self.ray = ray
        self.gpus = float(ray.cluster_resources().get("GPU", 0.0))
        return ray

    def prepare(self, runner: "Runner") -> None:
        """Connect; `auto` means cuda when the cluster has GPUs; the driver needs none itself.

        The config keeps ``auto`` (a worker resolves it on its node, where Ray gave it a GPU or
        none), so run keys, and so resuming, are the same as with the local executor.
        """
        self.connect()
        runner.auto_device = "cuda" if self.gpus > 0 else "cpu"
        runner.check_device = False

    def close(self) -> None:
        if self.ray is not None and self.owned:
            self.ray.shutdown()
        self.ray, self.owned = None, False

    # ------------------------------------------------------------------ execution
    def _options(self, runner: "Runner", planned: "PlannedRun | None", entry: "Entry") -> dict[str, Any]:
        device = str(runner.device(planned.config)) if planned is not None else "cpu"
        if device.startswith("cuda"):
            if self.gpus <= 0:
                raise BenchError(f"{entry.name}: the run asks for device {device} but the Ray cluster has no GPU; "
                                 "use --device cpu, or add GPU nodes")
            return {"num_gpus": 1 / self.runs_per_gpu, "num_cpus": self.cpus_per_task, "max_retries": 0}
        return {"num_cpus": self.cpus_per_task, "max_retries": 0}

    def execute(self, runner: "Runner", tasks: Sequence[tuple["Entry", int]]) -> list["Outcome"]:
        return self.execute_runs([(runner, entry, seed) for entry, seed in tasks])

    def execute_runs(self, items: Sequence[tuple["Runner", "Entry", int]]) -> list["Outcome"]:
        """Runs of one or several runners (the folds of a cross-validation) submitted together: a stage
        key shared between them (the folds' segmentation) is produced once and awaited by the others."""
        from tqdm.auto import tqdm

        ray = self.connect()
        remote = ray.remote(run_task)
        specs = {id(r): r.spec() for r in {id(r): r for r, _, _ in items}.values()}
        plans: list[PlannedRun | None] = []
        for runner, entry, seed in items:              # generates the phantom data once, here
            try:
                plans.append(runner.plan_run(entry, seed, generate=True))
            except KeyboardInterrupt:
                raise
            except Exception:                          # the task itself will record the error
                plans.append(None)
        options = [self._options(r, p, e) for p, (r, e, _) in zip(plans, items)]
        outcomes: list[Outcome | None] = [r.finish(r.skipped(p)) if p is not None and p.done else None
                                          for p, (r, _, _) in zip(plans, items)]
        needs = [set() if p is None or p.done else {(s.name, s.key) for s in p.stages if s.key and not s.cached}
                 for p in plans]
        producer: dict[tuple[str, str], int] = {}
        for i, keys in enumerate(needs):
            for k in sorted(keys):
                producer.setdefault(k, i)
        pending = [i for i, o in enumerate(outcomes) if o is None]
        running: dict[Any, tuple[int, int]] = {}      # ObjectRef -> (task index, attempt)
        started: dict[int, float] = {}
        suites = list(dict.fromkeys(r.suite for r, _, _ in items))
        bar = tqdm(total=len(items), disable=not items or not items[0][0].progress, unit="run", file=sys.stderr,
                   desc=f"suite {suites[0] if len(suites) == 1 else f'{suites[0]} +{len(suites) - 1}'} (ray)")
        bar.update(len(items) - len(pending))

        def submit(i: int, attempt: int) -> None:
            runner, entry, seed = items[i]
            started.setdefault(i, time.time())
            running[remote.options(**options[i]).remote(specs[id(runner)], entry.name, seed)] = (i, attempt)

        try:
            while pending or running:
                for i in list(pending):
                    if all(producer[k] == i or outcomes[producer[k]] is not None for k in needs[i]):
                        pending.remove(i)
                        submit(i, 1)
                bar.set_postfix_str(f"{len(running)} running, {len(pending)} waiting")
                if not running:  # pragma: no cover - the earliest waiting run is always submittable
                    raise AssertionError("no runnable task: stage producers form a cycle")
                ready, _ = ray.wait(list(running), num_returns=1)
                for ref in ready:
                    i, attempt = running.pop(ref)
                    runner, entry, seed = items[i]
                    outcome = self._result(ray, ref, runner, entry, seed, started[i])
                    outcome.attempts = attempt
                    if outcome.status == "failed" and attempt <= self.retries:
                        bar.write(f"retrying {entry.name} seed{seed} (attempt {attempt + 1}) after: {outcome.error}",
                                  file=sys.stderr)
                        submit(i, attempt + 1)
                        continue
                    outcomes[i] = runner.finish(outcome)
                    bar.update(1)
        except BaseException:                          # interrupted: stop what still runs, then re-raise
            for ref in running:
                try:
                    ray.cancel(ref, force=True)
                except Exception:  # already finished or its node is gone
                    pass
            raise
        finally:
            bar.close()
        return [o for o in outcomes if o is not None]

    @staticmethod
    def _result(ray: Any, ref: Any, runner: "Runner", entry: "Entry", seed: int, started: float) -> "Outcome":
        """The task's outcome; a lost task (its worker died) becomes a recorded failure."""
        try:
            return ray.get(ref)
        except Exception as exc:
            lost = f"the Ray task of {entry.name} seed{seed} was lost"
            return runner.failed(entry.name, seed, f"{lost}: {brief(exc)}", f"{lost}: {type(exc).__name__}: {exc}",
                                 started, host=socket.gethostname())
