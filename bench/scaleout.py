"""Job scale-out: ``jobs_scaleout_*`` and ``jobs_throughput_ratio``.

What it does, against PostgreSQL and Redis as production runs them (a database of its own,
``SCALEOUT_DATABASE_URL``, created when missing and emptied at the start; a Redis database of its
own, ``SCALEOUT_REDIS_URL``, flushed at the start):

1. ``SCALEOUT_WORKERS`` (4) workers, each a separate process started with the README's production
   ``manage.py rqworker`` command read from the README (the preloading worker class), as on
   separate machines sharing the database and Redis, plus its ``rqcron`` scheduler (the reconciler
   runs as in production), are started and warm (TensorFlow imported). Then ``SCALEOUT_JOBS`` (200) mixed jobs are queued at once:
   verify-and-run (4 in 10), freeze to ``.pb`` (3 in 10, one in ten of them naming a node the graph
   does not have, so they must fail with that reason) and compare (3 in 10), over real tiny TF1
   checkpoints (8 per run) written by TensorFlow. Every job targets its own file or pair, so that
   each one's product can be counted.
2. ``jobs_throughput_ratio``: one batch of ``SCALEOUT_RATIO_JOBS`` (60) such jobs run by 2 workers
   vs by 1, ``WORKER_TF_THREADS=1`` (one intra-op and one inter-op thread per worker, the setting
   for one worker per core), no scheduler; ``SCALEOUT_RATIO_REPEATS`` (2) pairs, the order
   alternating (1 then 2, then 2 then 1), each measurement on fresh copies of the same checkpoints
   with freshly started workers. The ratio is median jobs/s with 2 over median jobs/s with 1.

Checked for every job (part 1 and every ratio batch): it ended (``finished``, or ``failed`` with
a reason; nothing left ``queued``/``running``) as planned; it was executed once. Executions are
counted two ways that do not rely on the claim: a PostgreSQL trigger the bench installs on the
job table logs every status transition (exactly one ``queued -> running`` and one ``running ->
ended`` per job), and RQ's own per-execution results (exactly one execution that did not find
the row already claimed). Products are counted too: a ``Comparison`` row per compare job, an
``Export`` row and its file per finished freeze, a stored verification per verify.

Reported beside the figures, to say where time goes: per-job body time (``started_at`` to
``ended_at``) and queue wait from our rows, CPU seconds of the worker process trees (the worker,
its work horses and their sandboxed children, from ``wait4``) per job, CPU seconds per job of the
PostgreSQL and Redis servers (whole servers: other clients of them count too), and how busy the
whole machine's cores were during the batch (``/proc/stat``: other processes included).

What it does not measure: big checkpoints (each job here is dominated by per-job overhead:
fork, sandbox, TensorFlow session start, rows), workers on separate hosts (one machine's two
cores are shared by every worker, PostgreSQL and Redis), nor the web side. The machine may be
busy with other work: the ``machine_busy`` figure says how much.

    SCALEOUT_JOBS=30 SCALEOUT_RATIO_JOBS=12 SCALEOUT_RATIO_REPEATS=1 .venv/bin/python -m bench scaleout  # smoke
    .venv/bin/python -m bench scaleout                                                                      # full
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from bench.harness import BENCH_DIR, entry

BASE_DIR = BENCH_DIR.parent
DATABASE_URL = os.environ.get("SCALEOUT_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/bench_scaleout")
REDIS_URL = os.environ.get("SCALEOUT_REDIS_URL", "redis://127.0.0.1:6379/7")
JOBS = int(os.environ.get("SCALEOUT_JOBS", "200"))
WORKERS = int(os.environ.get("SCALEOUT_WORKERS", "4"))
RATIO_JOBS = int(os.environ.get("SCALEOUT_RATIO_JOBS", "60"))
# Three pairs measured 3.81-4.07 jobs/s with one worker and 7.05-7.23 with two: two pairs do.
RATIO_REPEATS = int(os.environ.get("SCALEOUT_RATIO_REPEATS", "2"))
BATCH_TIMEOUT = float(os.environ.get("SCALEOUT_BATCH_TIMEOUT", "900"))
STEPS = (100, 200, 300, 400, 500, 600, 700, 800)  # checkpoints per run
FREEZE_OUTPUTS = (["probs"], ["logits"], ["probs", "logits"])
MISSING_NODE = "no_such_node"
# Out of every ten jobs: verify, freeze, compare, verify, ...
PATTERN = ("restore", "freeze", "compare", "restore", "freeze", "compare", "restore", "freeze", "compare", "restore")
CLK_TCK = os.sysconf("SC_CLK_TCK")

TRANSITIONS_TABLE = "bench_job_transition"
TRANSITIONS_SQL = f"""
CREATE TABLE IF NOT EXISTS {TRANSITIONS_TABLE} (
    id bigserial PRIMARY KEY, job_id bigint NOT NULL, old_status text, new_status text,
    at timestamptz NOT NULL DEFAULT clock_timestamp(), backend integer NOT NULL DEFAULT pg_backend_pid());
CREATE OR REPLACE FUNCTION {TRANSITIONS_TABLE}() RETURNS trigger AS $$
BEGIN
    IF NEW.status IS DISTINCT FROM OLD.status THEN
        INSERT INTO {TRANSITIONS_TABLE} (job_id, old_status, new_status) VALUES (NEW.id, OLD.status, NEW.status);
    END IF;
    RETURN NEW;
END $$ LANGUAGE plpgsql;
DROP TRIGGER IF EXISTS {TRANSITIONS_TABLE} ON {{table}};
CREATE TRIGGER {TRANSITIONS_TABLE} AFTER UPDATE ON {{table}} FOR EACH ROW EXECUTE FUNCTION {TRANSITIONS_TABLE}();
TRUNCATE {TRANSITIONS_TABLE};
"""


# --- entry point from ``python -m bench`` ---------------------------------------------------------


def run(work: Path) -> dict[str, dict]:
    """Run the scale-out benchmark in a process of its own (its own database and Redis database)."""
    out = work / "scaleout.json"
    env = {**os.environ, "DATABASE_URL": DATABASE_URL, "REDIS_URL": REDIS_URL, "PYTHONPATH": str(BASE_DIR)}
    subprocess.run([sys.executable, "-m", "bench.scaleout", str(work / "scaleout"), str(out)],
                   cwd=BASE_DIR, env=env, check=True)
    return json.loads(out.read_text())


def main(argv: list[str]) -> int:
    from persistence.tfruntime import configure_environment

    configure_environment()
    work, out = Path(argv[0]), Path(argv[1])
    work.mkdir(parents=True, exist_ok=True)
    os.environ["DATABASE_URL"], os.environ["REDIS_URL"] = DATABASE_URL, REDIS_URL
    _create_database(DATABASE_URL)
    from bench import harness

    harness.setup_django(work)
    _reset(work)
    templates = _make_templates(work / "templates", runs=_runs_needed(max(JOBS, RATIO_JOBS)))

    print(f"scaleout: {JOBS} jobs, {WORKERS} workers + scheduler", flush=True)
    big = Batch.prepare(work, "all", templates, JOBS).execute(WORKERS, scheduler=True, threads="1")
    print(f"scaleout: {big.summary()}", flush=True)

    rates: dict[int, list[float]] = {1: [], 2: []}
    batches: dict[int, list[Batch]] = {1: [], 2: []}
    for repeat in range(RATIO_REPEATS):
        for workers in ((1, 2) if repeat % 2 == 0 else (2, 1)):
            batch = Batch.prepare(work, f"r{repeat}w{workers}", templates, RATIO_JOBS)
            batch.execute(workers, scheduler=False, threads="1")
            print(f"scaleout: {workers} worker(s): {batch.summary()}", flush=True)
            rates[workers].append(batch.jobs_per_second)
            batches[workers].append(batch)
    one, two = statistics.median(rates[1]), statistics.median(rates[2])
    ratio_defects = [d for w in (1, 2) for b in batches[w] for d in b.defects]
    results = {
        # Against one worker's rate in the same run: four workers on two cores must use both.
        "jobs_scaleout_jobs_per_second": entry(
            big.jobs_per_second, one, "jobs/s", "ratio >= 1.6", workers=WORKERS, **big.report(),
        ),
        "jobs_scaleout_defects": entry(
            float(big.defect_count + len(ratio_defects)), None, "jobs", "value <= 0",
            defects=(big.defects + ratio_defects)[:50], jobs_checked=len(big.jobs) + sum(
                len(b.jobs) for w in (1, 2) for b in batches[w]),
        ),
        "jobs_throughput_ratio": entry(
            two, one, "jobs/s", "ratio >= 1.6",
            jobs=RATIO_JOBS, repeats=RATIO_REPEATS, worker_tf_threads=1,
            spread={"two_workers": rates[2], "one_worker": rates[1]},
            ratio_per_pair=[round(b / a, 3) for a, b in zip(rates[1], rates[2], strict=True)],
            profile={str(w): [b.profile() for b in batches[w]] for w in (1, 2)},
        ),
    }
    out.write_text(json.dumps(results, indent=2))
    return 0


# --- setup ----------------------------------------------------------------------------------------


def _create_database(url: str) -> None:
    import psycopg

    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    if name in ("", "postgres", "test"):
        raise SystemExit(f"scaleout needs a database of its own (it empties it), not {name!r}")
    admin = urlunsplit(parts._replace(scheme="postgresql", path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')


def _reset(work: Path) -> None:
    """Empty the bench's own database and Redis database; install the transition log."""
    from django.core.management import call_command
    from django.db import connection

    from dashboard.jobs import redis_connection
    from dashboard.models import Job

    if urlsplit(REDIS_URL).path.strip("/") in ("", "0"):
        raise SystemExit(f"scaleout flushes its Redis database: give it one of its own, not {REDIS_URL}")
    call_command("flush", interactive=False, verbosity=0)
    with connection.cursor() as cursor:
        cursor.execute(TRANSITIONS_SQL.format(table=connection.ops.quote_name(Job._meta.db_table)))
    redis_connection().flushdb()
    shutil.rmtree(work / "checkpoints", ignore_errors=True)
    (work / "checkpoints").mkdir()


def _runs_needed(jobs: int) -> int:
    per_run = len(STEPS)
    freezes = -(-3 * jobs // 10)
    return max(2, -(-freezes // (len(FREEZE_OUTPUTS) * per_run)) + 1)


def _make_templates(directory: Path, runs: int) -> list[Path]:
    from tests.checkpoint_factory import make_seed_run

    made = []
    for i in range(runs):
        target = directory / f"seed-{i}"
        make_seed_run(target, steps=STEPS, max_to_keep=None)
        made.append(target)
    return made


# --- one batch ------------------------------------------------------------------------------------


@dataclass
class Batch:
    label: str
    planned: list[tuple[str, dict, str]]  # (kind, start kwargs, expected status)
    work: Path
    jobs: dict[int, str] = field(default_factory=dict)  # pk -> expected status
    wall: float = 0.0
    enqueue_seconds: float = 0.0
    worker_cpu: float = 0.0
    machine_busy: float = 0.0
    services_cpu: dict[str, float] = field(default_factory=dict)
    defects: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    @classmethod
    def prepare(cls, work: Path, label: str, templates: list[Path], n: int) -> Batch:
        """Fresh copies of the template runs, scanned, and the plan of ``n`` jobs over them."""
        from dashboard import scanning
        from dashboard.models import Checkpoint, Run

        runs = []
        for template in templates:
            directory = work / "checkpoints" / f"{label}-{template.name}"
            shutil.copytree(template, directory)
            run = Run.objects.create(name=f"{label}-{template.name}", directory=str(directory))
            scanning.scan(run)
            runs.append(run)
        per_run = [list(Checkpoint.objects.filter(run=r, prefix__startswith="model.ckpt").order_by("step"))
                   for r in runs]
        checkpoints = [c for cs in per_run for c in cs]
        freezes = [(c, o) for o in FREEZE_OUTPUTS for c in checkpoints]
        pairs = [(r, a, b) for r, cs in zip(runs, per_run, strict=True) for i, a in enumerate(cs) for b in cs[i + 1:]]
        planned = []
        counters = {"restore": 0, "freeze": 0, "compare": 0}
        for i in range(n):
            kind = PATTERN[i % len(PATTERN)]
            k = counters[kind]
            counters[kind] += 1
            if kind == "restore":
                c = checkpoints[k % len(checkpoints)]
                planned.append((kind, {"run": c.run, "checkpoint": c, "params": {"output": "probs"}}, "finished"))
            elif kind == "freeze" and k % 10 == 9:
                c = checkpoints[(k // 10) % len(checkpoints)]
                planned.append((kind, {"run": c.run, "checkpoint": c, "params": {"outputs": [MISSING_NODE]}}, "failed"))
            elif kind == "freeze":
                c, outputs = freezes.pop(0)
                planned.append((kind, {"run": c.run, "checkpoint": c, "params": {"outputs": outputs}}, "finished"))
            else:
                r, a, b = pairs.pop(0)
                planned.append((kind, {"run": r, "checkpoint": b, "params": {"a": a.pk, "b": b.pk}}, "finished"))
        return cls(label=label, planned=planned, work=work)

    def execute(self, workers: int, *, scheduler: bool, threads: str) -> Batch:
        from dashboard import jobs
        from dashboard.models import Job

        procs = Processes(self.work / "logs" / self.label, threads=threads)
        try:
            procs.start_workers(workers)
            if scheduler:
                procs.start_scheduler()
            busy_before, services_before = _machine_ticks(), _services_cpu()
            cpu_before = procs.workers_cpu()
            started = time.perf_counter()
            for kind, kwargs, expected in self.planned:
                self.jobs[jobs.start(kind, **kwargs).pk] = expected
            self.enqueue_seconds = time.perf_counter() - started
            self._wait_until_ended(procs)
            self.wall = time.perf_counter() - started
            self.machine_busy = _busy_fraction(busy_before, _machine_ticks())
            self.services_cpu = {k: v - services_before[k] for k, v in _services_cpu().items()}
        finally:
            self.worker_cpu = procs.stop() - cpu_before if procs.workers else 0.0
        rows = Job.objects.filter(pk__in=self.jobs)
        self.counts = {s: rows.filter(status=s).count() for s in (*Job.ENDED, Job.QUEUED, Job.RUNNING)}
        self.defects = self._audit()
        return self

    def _wait_until_ended(self, procs: Processes) -> None:
        from dashboard.models import Job

        open_rows = Job.objects.filter(pk__in=self.jobs).exclude(status__in=Job.ENDED)
        deadline = time.monotonic() + BATCH_TIMEOUT
        while open_rows.exists():
            procs.check_alive()
            if time.monotonic() > deadline:
                left = list(open_rows.values_list("pk", "status"))
                self.defects.append(f"{len(left)} job(s) still open after {BATCH_TIMEOUT:g} s: {left[:20]}")
                return
            time.sleep(0.1)

    @property
    def jobs_per_second(self) -> float:
        return len(self.jobs) / self.wall if self.wall else 0.0

    @property
    def defect_count(self) -> int:
        return len(self.defects)

    def _audit(self) -> list[str]:
        return audit(self.jobs) + self.defects

    def profile(self) -> dict:
        from dashboard.models import Job

        rows = list(Job.objects.filter(pk__in=self.jobs).values("created_at", "started_at", "ended_at"))
        body = [(r["ended_at"] - r["started_at"]).total_seconds() for r in rows if r["started_at"] and r["ended_at"]]
        waits = [(r["started_at"] - r["created_at"]).total_seconds() for r in rows if r["started_at"]]
        return {
            "jobs": len(self.jobs), "wall_seconds": round(self.wall, 3), "jobs_per_second": round(self.jobs_per_second, 3),
            "enqueue_seconds": round(self.enqueue_seconds, 3),
            "body_seconds_median": round(statistics.median(body), 4) if body else None,
            "body_seconds_total": round(sum(body), 3),
            "queue_wait_seconds_median": round(statistics.median(waits), 3) if waits else None,
            "worker_cpu_seconds_per_job": round(self.worker_cpu / max(len(self.jobs), 1), 4),
            "worker_cpu_cores": round(self.worker_cpu / self.wall, 3) if self.wall else None,
            "machine_busy": round(self.machine_busy, 3),
            **{f"{name}_server_cpu_seconds_per_job": round(v / max(len(self.jobs), 1), 4) for name, v in self.services_cpu.items()},
        }

    def report(self) -> dict:
        return {"statuses": self.counts, "defects_found": self.defect_count, **self.profile()}

    def summary(self) -> str:
        p = self.profile()
        return (f"{p['jobs']} jobs in {p['wall_seconds']} s = {p['jobs_per_second']} jobs/s; {self.counts}; "
                f"body median {p['body_seconds_median']} s, worker CPU {p['worker_cpu_seconds_per_job']} s/job "
                f"({p['worker_cpu_cores']} cores), machine busy {p['machine_busy']}; defects {self.defect_count}"
                + (f": {self.defects[:3]}" if self.defects else ""))


def audit(planned: dict[int, str]) -> list[str]:
    """What is wrong with these jobs: not ended as planned, executed other than once, products missing."""
    from django.db import connection
    from rq.job import Job as RQJob

    from dashboard.jobs import redis_connection
    from dashboard.models import Comparison, Export, Job

    defects = []
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT job_id, old_status, new_status FROM {TRANSITIONS_TABLE} WHERE job_id = ANY(%s) "
                       "ORDER BY id", [list(planned)])
        transitions: dict[int, list[tuple[str, str]]] = {}
        for pk, old, new in cursor.fetchall():
            transitions.setdefault(pk, []).append((old, new))
    connection_ = redis_connection()
    for job in Job.objects.filter(pk__in=planned).order_by("pk"):
        expected = planned[job.pk]
        moves = transitions.get(job.pk, [])
        if job.status != expected:
            defects.append(f"#{job.pk} {job.kind} ended {job.status}, planned {expected}: {job.error[:200]}")
        if job.status == Job.FAILED and not job.error.strip():
            defects.append(f"#{job.pk} {job.kind} failed without a reason")
        if expected == Job.FAILED and MISSING_NODE not in job.error:
            defects.append(f"#{job.pk} {job.kind} did not fail for the missing node: {job.error[:200]}")
        if moves.count((Job.QUEUED, Job.RUNNING)) != 1 or len(moves) != 2:
            defects.append(f"#{job.pk} {job.kind} status transitions {moves} (one claim and one verdict expected)")
        results = RQJob.fetch(job.rq_job_id, connection=connection_).results() if job.rq_job_id else []
        executions = [r for r in results if not (isinstance(r.return_value, dict) and r.return_value.get("skipped"))]
        if len(executions) != 1:
            defects.append(f"#{job.pk} {job.kind} executed {len(executions)} times by RQ ({len(results)} deliveries)")
        if job.kind == Job.COMPARE and job.status == Job.FINISHED:
            if Comparison.objects.filter(job=job).count() != 1:
                defects.append(f"#{job.pk} compare finished without its comparison")
        if job.kind == Job.FREEZE and job.status == Job.FINISHED:
            export = Export.objects.filter(pk=(job.result.get("export") or {}).get("id")).first()
            if export is None or not os.path.isfile(export.file_path()):
                defects.append(f"#{job.pk} freeze finished without its export file")
        if job.kind == Job.RESTORE and job.status == Job.FINISHED:
            if not (job.checkpoint and job.checkpoint.verification.get("checked_at")):
                defects.append(f"#{job.pk} verify finished without a stored verification")
    missing = set(planned) - set(Job.objects.filter(pk__in=planned).values_list("pk", flat=True))
    defects += [f"#{pk} row lost" for pk in sorted(missing)]
    return defects


# --- processes ------------------------------------------------------------------------------------


def readme_command(name: str) -> list[str]:
    """The README's production command that runs ``manage.py <name>``, as an argument list."""
    import shlex

    section = (BASE_DIR / "README.md").read_text().split("## Production", 1)[1]
    for line in section.split("```sh", 1)[1].split("```", 1)[0].splitlines():
        if not line.startswith(".venv/bin/"):
            continue
        argv = shlex.split(line, comments=True)
        if len(argv) > 2 and argv[1] == "manage.py" and argv[2] == name:
            return argv
    raise LookupError(f"the README's production section has no manage.py {name} command")


class Processes:
    """Workers (and the scheduler) started as the README's production section starts them."""

    def __init__(self, logs: Path, *, threads: str):
        from django.conf import settings

        logs.mkdir(parents=True, exist_ok=True)
        self.logs = logs
        self.workers: list[subprocess.Popen] = []
        self.others: list[subprocess.Popen] = []
        self.env = {
            **os.environ, "DEBUG": "0", "SECRET_KEY": "bench-scaleout", "ALLOWED_HOSTS": "localhost",
            "DATABASE_URL": DATABASE_URL, "REDIS_URL": REDIS_URL, "WORKER_TF_THREADS": threads,
            "CHECKPOINT_ROOTS": os.pathsep.join(str(r) for r in settings.CHECKPOINT_ROOTS),
            "EXPORT_ROOT": str(settings.EXPORT_ROOT), "VAR_DIR": str(settings.VAR_DIR),
            "SCAN_INTERVAL_SECONDS": "0", "LOG_LEVEL": "WARNING", "PYTHONPATH": str(BASE_DIR),
        }

    def _spawn(self, name: str, command: str) -> subprocess.Popen:
        with open(self.logs / f"{name}.log", "wb") as log:
            return subprocess.Popen([sys.executable, *readme_command(command)[1:]], cwd=BASE_DIR, env=self.env,
                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def start_workers(self, n: int) -> None:
        from rq.worker import Worker

        from dashboard.jobs import redis_connection

        connection = redis_connection()
        before = len(Worker.all(connection=connection))
        for i in range(n):
            self.workers.append(self._spawn(f"worker-{i}", "rqworker"))
        deadline = time.monotonic() + 180
        # Registered means TensorFlow is imported (the worker class imports it in __init__).
        while len(Worker.all(connection=connection)) < before + n:
            self.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"workers did not register; logs in {self.logs}")
            time.sleep(0.2)

    def start_scheduler(self) -> None:
        self.others.append(self._spawn("rqcron", "rqcron"))

    def check_alive(self) -> None:
        for proc in self.workers + self.others:
            if proc.poll() is not None:
                logs = "\n".join(p.read_text(errors="replace")[-2000:] for p in self.logs.glob("*.log"))
                raise RuntimeError(f"process {proc.args[2:4]} exited {proc.returncode}:\n{logs}")

    def workers_cpu(self) -> float:
        """CPU seconds so far of the workers and every child they have reaped (their work horses)."""
        total = 0.0
        for proc in self.workers:
            with open(f"/proc/{proc.pid}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            total += sum(int(v) for v in fields[11:15]) / CLK_TCK  # utime stime cutime cstime
        return total

    def stop(self) -> float:
        """Stop everything (warm shutdown); return the workers' total CPU seconds, horses included."""
        total = 0.0
        for proc in self.others + self.workers:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.workers:
            deadline = time.monotonic() + 60
            while True:
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    proc.returncode = os.waitstatus_to_exitcode(status)
                    total += usage.ru_utime + usage.ru_stime
                    break
                if time.monotonic() > deadline:  # a worker that does not stop: its CPU is not counted
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                    break
                time.sleep(0.05)
        for proc in self.others:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.workers, self.others = [], []
        return total


def _machine_ticks() -> tuple[int, int]:
    with open("/proc/stat") as handle:
        values = [int(v) for v in handle.readline().split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


def _services_cpu() -> dict[str, float]:
    """CPU seconds so far of PostgreSQL (every server process, exited backends included) and Redis."""
    from dashboard.jobs import redis_connection

    info = redis_connection().info("cpu")
    postgres = 0.0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as handle:
                head, _, rest = handle.read().rpartition(")")
        except OSError:
            continue
        if head.endswith("(postgres"):
            fields = rest.split()
            # The postmaster's cutime/cstime hold the backends it has reaped; live ones count themselves.
            postgres += sum(int(v) for v in fields[11:15 if fields[1] == "1" else 13]) / CLK_TCK
    return {"postgres": postgres, "redis": info["used_cpu_sys"] + info["used_cpu_user"]}


def _busy_fraction(before: tuple[int, int], after: tuple[int, int]) -> float:
    total = after[1] - before[1]
    return (after[0] - before[0]) / total if total else 0.0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
