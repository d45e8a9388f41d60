"""Where the runs of a plan run: `inline` (one after another in this process), `local` (one process per
device of this machine, --devices) or `slurm` (one job per run, a job array, submitted through submitit).

Whichever launcher runs them, a run is its script with the same flags, and writes the same results file:
the tables are made from those files, so they do not depend on the launcher. Each run keeps a record
beside its log (<results_dir>/<setting>/logs/<run>.run.json: state, launcher, device or job id, times), which
`--status` reads and which keeps a second `reproduce.py` from submitting a run whose job is still queued.
A run whose job ends without its results file (a crash, `scancel`, a node lost) is failed: the same command
submits it again, and a training run continues from its resume state (--resume). A job that reaches its time
limit or is preempted is requeued by submitit (`Checkpointable`) and continues the same way.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Deque, Dict, List, Optional, Sequence, Tuple

from mvfa.common.errors import UserError
from mvfa.common.outputs import atomic_write, naming_command
from mvfa.studies.plan import Run, command

LAUNCHERS = ('inline', 'local', 'slurm')
CPU = 'cpu'
POLL_SECONDS = 1.0
LOG_TAIL_LINES = 8
# SLURM states of a job that will still run (squeue's long names).
QUEUED = {'PENDING', 'CONFIGURING', 'RUNNING', 'COMPLETING', 'REQUEUED', 'REQUEUE_HOLD', 'REQUEUE_FED',
          'RESIZING', 'SUSPENDED', 'STAGE_OUT', 'SIGNALING'}


class LauncherError(UserError):
    """A launcher cannot run the plan here (no SLURM, an unknown partition, a device that is not there)."""


@dataclass(frozen=True)
class Scripts:
    """The four scripts: their `main`s (the inline launcher calls them) and the folder that holds them (the
    other launchers run each as a process of its own)."""
    mains: Dict[str, Callable[[List[str]], object]]
    folder: Path

    def path(self, script: str) -> Path:
        return self.folder / f'{script}.py'


@dataclass(frozen=True)
class Job:
    """A run of the plan with its script and flags, and where it writes."""
    run: Run
    script: str
    argv: List[str]
    results: Path
    log: Path

    @property
    def record_path(self) -> Path:
        return self.log.with_suffix('.run.json')

    def command_line(self) -> str:
        return f'python {self.script}.py {" ".join(self.argv)}'


def jobs(runs: Sequence[Run], args: argparse.Namespace) -> List[Job]:
    made = []
    for task in runs:
        script, argv = command(task, args)
        made.append(Job(task, script, argv, task.results_path(args.results_dir), task.log_path(args.results_dir)))
    return made


# ---------------------------------------------------------------- run records

def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec='seconds')


def read_record(job: Job) -> Dict:
    try:
        return json.loads(job.record_path.read_text(encoding='utf-8'))
    except (OSError, ValueError):
        return {}


def write_record(job: Job, launcher: str, state: str, **fields: object) -> None:
    """The run's record: `fields` join those of its record so far (a new attempt starts afresh)."""
    record = {} if state in ('running', 'submitted') else read_record(job)
    record.update(run=job.run.describe(), command=job.command_line(), launcher=launcher, state=state, **fields)
    if state in ('done', 'failed') and 'started_unix' in record:
        record['seconds'] = round(time.time() - record['started_unix'], 1)
        record['ended'] = now()
    job.log.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(job.record_path, json.dumps(record, indent=2))


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(encoding='utf-8', errors='replace')
    except OSError:
        return '(no log)'
    # Progress bars rewrite their line with carriage returns: keep what each line last showed.
    shown = [line.rsplit('\r', 1)[-1] for line in text.splitlines() if line.strip()]
    return '\n'.join(shown[-lines:]) or '(empty log)'


def squeue_states(job_ids: Sequence[str]) -> Dict[str, str]:
    """The queued jobs among `job_ids` (array tasks '123_4' too) and their SLURM state."""
    if not job_ids or shutil.which('squeue') is None:
        return {}
    arrays = sorted({job_id.split('_')[0] for job_id in job_ids})
    done = subprocess.run(['squeue', '-h', '-r', '-o', '%i %T', '-j', ','.join(arrays)],
                          capture_output=True, text=True, check=False)
    states = dict(line.split(maxsplit=1) for line in done.stdout.splitlines() if line.strip())
    return {job_id: states[job_id] for job_id in job_ids if job_id in states}


def still_queued(job: Job, record: Dict) -> bool:
    """Whether the run's last job (SLURM) or process (local, on this host) will still write its results."""
    if record.get('state') not in ('running', 'submitted'):
        return False
    if record.get('job_id'):
        return squeue_states([record['job_id']]).get(record['job_id']) in QUEUED
    pid = record.get('pid')
    if pid is None or record.get('host') != os.uname().nodename:
        return False
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def duration(seconds: float) -> str:
    return f'{seconds:.1f} s' if seconds < 60 else f'{seconds / 60:.1f} min' if seconds < 3600 else f'{seconds / 3600:.2f} h'


def status(job: Job, done: bool) -> Tuple[str, str]:
    """The run's state for --status (done, running, pending, failed, not started) and a detail."""
    record = read_record(job)
    if done:
        seconds = None
        try:
            seconds = (json.loads(job.results.read_text(encoding='utf-8')).get('cost') or {}).get('wall_time_s')
        except (OSError, ValueError):
            pass
        seconds = seconds if seconds is not None else record.get('seconds')
        return 'done', '' if seconds is None else duration(seconds)
    if not record:
        return 'not started', ''
    if still_queued(job, record):
        state = squeue_states([record['job_id']])[record['job_id']] if record.get('job_id') else 'RUNNING'
        where = f"job {record['job_id']}" if record.get('job_id') else f"pid {record.get('pid')} on {record.get('device')}"
        return ('pending' if state == 'PENDING' else 'running'), f'{where}, since {record.get("started", "?")}'
    return 'failed', f'{record.get("launcher")} run ended without its results file; log {job.log}:\n' \
                     + log_tail(job.log)


# ---------------------------------------------------------------- inline

def launch_inline(pending: Sequence[Job], scripts: Scripts) -> List[Job]:
    """Each run in this process, one after another; a failing run ends the plan (its error is the message)."""
    for job in pending:
        print(f'== {job.run.describe()}: {" ".join(job.argv)}', flush=True)
        write_record(job, 'inline', 'running', started=now(), started_unix=time.time(), pid=os.getpid(),
                     host=os.uname().nodename, device='this process')
        try:
            with naming_command(job.command_line()):
                scripts.mains[job.script](job.argv)
        except BaseException:
            write_record(job, 'inline', 'failed')
            raise
        write_record(job, 'inline', 'done')
    return []


# ---------------------------------------------------------------- local

def parse_devices(text: Optional[str]) -> List[str]:
    """--devices: GPU indices and 'cpu', comma-separated ('0,1,2,3'; 'cpu,cpu': two CPU workers). Default:
    every GPU this machine has, else one CPU worker. A GPU that is not there is an error."""
    import torch  # only the local launcher asks which GPUs there are
    count = torch.cuda.device_count()
    if text is None:
        return [str(index) for index in range(count)] or [CPU]
    devices = [item.strip() for item in text.split(',') if item.strip()]
    for device in devices:
        if device != CPU and not (device.isdigit() and int(device) < count):
            there = f'GPUs 0 to {count - 1}' if count else 'no GPU'
            raise LauncherError(f'--devices {text}: {device} is not a device of this machine, which has {there} '
                                f"(give GPU indices or 'cpu', e.g. --devices 0,1 or --devices cpu,cpu)")
    if not devices:
        raise LauncherError(f"--devices {text!r} names no device: give GPU indices or 'cpu', e.g. --devices 0,1")
    return devices


def pinned(job: Job, device: str, cpu_workers: int, args: argparse.Namespace) -> Tuple[List[str], Dict[str, str]]:
    """The run's flags and environment on `device`: a GPU is the only one the process sees; a CPU worker sees
    none and gets its share of the cores as --threads (unless --device or --threads were given)."""
    env = dict(os.environ, CUDA_VISIBLE_DEVICES='' if device == CPU else device, PYTHONUNBUFFERED='1')
    argv = list(job.argv)
    if 'device' not in args.given:
        argv += ['--device', CPU if device == CPU else 'cuda']
    if device == CPU and 'threads' not in args.given:
        argv += ['--threads', str(max(1, (len(os.sched_getaffinity(0)) // cpu_workers)))]
    return argv, env


def launch_local(pending: Sequence[Job], scripts: Scripts, devices: List[str], args: argparse.Namespace) -> List[Job]:
    """At most one run per device at a time, each a process of its own writing its log; returns the failed
    runs. Ctrl-C interrupts the running ones (they keep their resume state) and ends the plan."""
    queue: Deque[Job] = deque(pending)
    running: List[Tuple[str, Job, subprocess.Popen]] = []  # (device, run, its process)
    failed: List[Job] = []
    cpu_workers = devices.count(CPU) or 1
    try:
        while queue or running:
            for device in devices_free(devices, running):
                if not queue:
                    break
                job = queue.popleft()
                argv, env = pinned(job, device, cpu_workers, args)
                job.log.parent.mkdir(parents=True, exist_ok=True)
                with open(job.log, 'w', encoding='utf-8') as log:
                    process = subprocess.Popen([sys.executable, str(scripts.path(job.script)), *argv], env=env,
                                               stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
                running.append((device, job, process))
                name = CPU if device == CPU else f'cuda:{device}'
                write_record(job, 'local', 'running', started=now(), started_unix=time.time(), pid=process.pid,
                             host=os.uname().nodename, device=name)
                print(f'started {job.run.describe()} on {name} (log {job.log})', flush=True)
            time.sleep(POLL_SECONDS)
            for entry in [entry for entry in running if entry[2].poll() is not None]:
                running.remove(entry)
                _, job, process = entry
                if process.returncode == 0 and job.results.is_file():
                    write_record(job, 'local', 'done', exit_status=0)
                    print(f'done {job.run.describe()}', flush=True)
                else:
                    write_record(job, 'local', 'failed', exit_status=process.returncode)
                    failed.append(job)
                    print(f'failed {job.run.describe()} (exit status {process.returncode}); the end of {job.log}:\n'
                          f'{log_tail(job.log)}', flush=True)
    except KeyboardInterrupt:
        for _, job, process in running:
            process.send_signal(signal.SIGINT)
        for _, job, process in running:
            process.wait()
            write_record(job, 'local', 'failed', exit_status=process.returncode)
        raise
    return failed


def devices_free(devices: List[str], running: List[Tuple[str, Job, subprocess.Popen]]) -> List[str]:
    """The devices with no run: each entry of --devices is one slot ('cpu,cpu' is two)."""
    busy = [device for device, _, _ in running]
    free = []
    for device in devices:
        if device in busy:
            busy.remove(device)
        else:
            free.append(device)
    return free


# ---------------------------------------------------------------- slurm

def check_slurm(args: argparse.Namespace) -> None:
    """Before anything is submitted: SLURM's client is here, and the partition (if given) exists."""
    missing = [name for name in ('sbatch', 'squeue', 'sinfo') if shutil.which(name) is None]
    if missing:
        raise LauncherError(f'--launcher slurm: {", ".join(missing)} not found on PATH: run reproduce.py on a '
                            'machine with the SLURM client (a login node), or use --launcher local')
    if importlib.util.find_spec('submitit') is None:
        raise LauncherError('--launcher slurm needs submitit: pip install -r requirements.txt')
    if args.slurm_partition is not None:
        found = subprocess.run(['sinfo', '-h', '-o', '%R'], capture_output=True, text=True, check=False)
        partitions = found.stdout.split()
        if found.returncode != 0:
            raise LauncherError(f'--launcher slurm: sinfo failed ({found.stderr.strip() or found.returncode}): '
                                'is the cluster reachable from here?')
        if args.slurm_partition not in partitions:
            raise LauncherError(f'--slurm_partition {args.slurm_partition}: no such partition; this cluster has '
                                f'{", ".join(partitions) or "none"}')


def sbatch_options(pairs: Sequence[str]) -> Dict[str, object]:
    """--slurm_sbatch KEY=VALUE ... (KEY alone: a switch) as submitit's slurm_additional_parameters."""
    options: Dict[str, object] = {}
    for pair in pairs:
        key, separator, value = pair.partition('=')
        if not key or key.startswith('-'):
            raise LauncherError(f"--slurm_sbatch {pair}: give sbatch options as KEY=VALUE without dashes, e.g. "
                                "--slurm_sbatch qos=high constraint=a100")
        options[key.replace('-', '_')] = value if separator else True
    return options


class ScriptJob:
    """One run as a SLURM job: its script in a process of its own, its output in the run's log. Requeued after a
    time limit or preemption (submitit calls `checkpoint`): the same command, whose --resume continues."""

    def __init__(self, script: Path, argv: List[str], log: Path) -> None:
        self.script, self.argv, self.log = script, argv, log

    def __call__(self) -> int:
        with open(self.log, 'a', encoding='utf-8') as log:
            log.write(f'== attempt on {os.uname().nodename}, job {os.environ.get("SLURM_JOB_ID", "?")}\n')
            log.flush()
            status = subprocess.run([sys.executable, str(self.script), *self.argv], stdout=log,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, check=False).returncode
        if status != 0:
            raise RuntimeError(f'{self.script.name} ended with exit status {status}; see {self.log}')
        return status

    def checkpoint(self) -> object:
        from submitit.helpers import DelayedSubmission
        return DelayedSubmission(self)


def slurm_executor(args: argparse.Namespace, scripts: Scripts, jobs_count: int) -> object:
    import submitit
    executor = submitit.AutoExecutor(folder=args.results_dir / 'slurm' / '%j', cluster='slurm')
    parameters: Dict[str, object] = dict(
        timeout_min=args.slurm_time, cpus_per_task=args.slurm_cpus_per_job, slurm_array_parallelism=jobs_count,
        name='mvfa', slurm_additional_parameters=sbatch_options(args.slurm_sbatch),
        # The jobs import the project: from wherever reproduce.py was started.
        slurm_setup=[f'export PYTHONPATH={scripts.folder}${{PYTHONPATH:+:$PYTHONPATH}}'])
    if args.slurm_gpus_per_job:
        parameters['gpus_per_node'] = args.slurm_gpus_per_job
    optional = {'slurm_partition': args.slurm_partition, 'slurm_mem': args.slurm_mem,
                'slurm_account': args.slurm_account}
    parameters.update({key: value for key, value in optional.items() if value is not None})
    executor.update_parameters(**parameters)
    return executor


def launch_slurm(pending: Sequence[Job], queued: Sequence[Job], scripts: Scripts,
                 args: argparse.Namespace) -> List[Job]:
    """Submit the pending runs as one job array, then wait for them and for the `queued` runs' jobs of an
    earlier command; returns the runs whose job ended without their results file."""
    waiting = list(queued)
    if pending:
        executor = slurm_executor(args, scripts, len(pending))
        for job in pending:
            job.log.parent.mkdir(parents=True, exist_ok=True)
            job.log.write_text('', encoding='utf-8')
        with executor.batch():
            submitted = [executor.submit(ScriptJob(scripts.path(job.script), job.argv, job.log)) for job in pending]
        for job, slurm_job in zip(pending, submitted):
            write_record(job, 'slurm', 'submitted', started=now(), started_unix=time.time(),
                         job_id=slurm_job.job_id, slurm_log=str(slurm_job.paths.stdout))
            print(f'submitted {job.run.describe()}: job {slurm_job.job_id} (log {job.log})', flush=True)
        waiting += pending
    failed = []
    ids = {job: read_record(job)['job_id'] for job in waiting}
    while ids:
        time.sleep(POLL_SECONDS)
        states = squeue_states(list(ids.values()))
        for job, job_id in list(ids.items()):
            if job_id in states:
                continue
            del ids[job]
            if job.results.is_file():
                write_record(job, 'slurm', 'done')
                print(f'done {job.run.describe()} (job {job_id})', flush=True)
            else:
                write_record(job, 'slurm', 'failed')
                failed.append(job)
                print(f'failed {job.run.describe()}: job {job_id} ended without its results file; the end of '
                      f'{job.log}:\n{log_tail(job.log)}', flush=True)
    return failed


def launch(pending: Sequence[Job], queued: Sequence[Job], scripts: Scripts, args: argparse.Namespace) -> List[Job]:
    """Run the pending runs with --launcher (and wait for the `queued` ones still running from before);
    returns the runs that failed."""
    if args.launcher == 'inline':
        return launch_inline(pending, scripts)
    if args.launcher == 'local':
        return launch_local(pending, scripts, parse_devices(args.devices), args)
    return launch_slurm(pending, queued, scripts, args)
