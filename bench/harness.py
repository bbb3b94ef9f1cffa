"""What every benchmark needs around the thing it measures, written once.

A Kafka broker of its own (deploy/kafka/kafka.sh on free loopback ports, data in a
temporary folder) that is always stopped, also on Ctrl-C or SIGTERM; child processes that
are always torn down; the CPU and peak-RSS meters; the machine and version lines printed
before the figures; and the arguments most benchmarks share (--seed, --out, --timeout).
Each `bench/*.py` keeps only what it measures and how it reports it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any, Final

import orjson
import polars as pl
import psutil

from bench.generate import DEFAULT_OUT
from linepulse.runtime import free_loopback_ports

ROOT: Final = Path(__file__).resolve().parents[1]
KAFKA_SH: Final = ROOT / "deploy" / "kafka" / "kafka.sh"
# The LinePulse command line as a child process runs it (one place to change if it moves).
LINEPULSE: Final = (sys.executable, "-m", "services.app")

START_TIMEOUT_S: Final = 300.0  # a fresh checkout fetches the broker's jars first
STOP_TIMEOUT_S: Final = 60.0
BUSY_PERCENT: Final = 20.0

# Every process a benchmark spawned and has not reaped yet: killed on the way out.
CHILDREN: list[subprocess.Popen[bytes]] = []
# Processes that are part of the benchmark (the brokers): their CPU is not noise.
OUR_PIDS: list[int] = []


# -- the broker ----------------------------------------------------------------------------


class Broker:
    """A single-node KRaft broker from deploy/kafka/kafka.sh, data in `data`."""

    def __init__(self, data: Path) -> None:
        port, controller = free_loopback_ports(2)
        self.data = data
        self.bootstrap = f"127.0.0.1:{port}"
        self.env = {
            **os.environ,
            "KAFKA_PORT": str(port),
            "KAFKA_CONTROLLER_PORT": str(controller),
            "KAFKA_DATA": str(data),
        }
        self.started = False

    def _run(self, command: str, timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", str(KAFKA_SH), command],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            start_new_session=True,  # a Ctrl-C at the terminal must not cut a stop short
        )

    def start(self) -> str:
        self.started = True  # a failed start may still leave a process: stop() checks
        done = self._run("start", START_TIMEOUT_S)
        if done.returncode != 0:
            raise RuntimeError(f"kafka.sh start failed:\n{done.stdout}{done.stderr}")
        return done.stdout.strip()

    def pid(self) -> int | None:
        try:
            return int((self.data / "kafka.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def stop(self) -> str:
        if not self.started:
            return "kafka.sh: never started"
        done = self._run("stop", STOP_TIMEOUT_S + 10)
        self.started = done.returncode != 0
        return (done.stdout + done.stderr).strip()


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@contextmanager
def broker_session(
    name: str, prefix: str, out: Path | None = None
) -> Iterator[tuple[Broker, Path]]:
    """Start a broker in a fresh temporary folder; yield it and the folder.

    SIGTERM is handled as Ctrl-C. Whatever happens, the children are killed, the broker's
    server log is copied to `out` (when given), the broker is stopped and the folder
    removed (kept, and said so, if the broker did not stop). A Ctrl-C or SIGTERM ends the
    program with exit code 130 after that teardown, `name` saying so on stderr.
    """
    previous = signal.signal(signal.SIGTERM, _stop_on_sigterm)
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    broker = Broker(tmp / "kafka")
    interrupted = False
    try:
        print(broker.start(), flush=True)
        pid = broker.pid()
        if pid is not None:
            OUR_PIDS.append(pid)
        yield broker, tmp
    except KeyboardInterrupt:
        print(f"{name}: interrupted; stopping what it started", file=sys.stderr, flush=True)
        interrupted = True
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip this
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        kill_children()
        server_log = tmp / "kafka" / "logs" / "server.log"
        if out is not None and server_log.exists():
            shutil.copy(server_log, out / "kafka-server.log")
        print(broker.stop(), flush=True)
        if not broker.started:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"the broker did not stop; its data is in {tmp}", file=sys.stderr)
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if interrupted:
        sys.exit(130)


# -- child processes -----------------------------------------------------------------------


class Child:
    """A measured subprocess: output to a log file, peak RSS from the kernel's VmHWM."""

    def __init__(self, name: str, cmd: list[str], log: Path) -> None:
        self.name = name
        self.log = log
        with log.open("wb") as out:  # the child keeps its own descriptor
            self.started = time.perf_counter()
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        self.peak_kib = 0
        self.cpu_s: float | None = None
        CHILDREN.append(self.proc)

    def sample(self) -> None:
        """Read the high-water mark of the resident set and the CPU time used so far."""
        peak = _vm_hwm_kib(self.proc.pid)
        if peak is not None:
            self.peak_kib = max(self.peak_kib, peak)
        else:  # not Linux, or gone: psutil's current RSS
            with _quiet_psutil():
                rss = psutil.Process(self.proc.pid).memory_info().rss // 1024
                self.peak_kib = max(self.peak_kib, rss)
        with _quiet_psutil():
            process = psutil.Process(self.proc.pid)
            times = process.cpu_times()
            self.cpu_s = times.user + times.system
            # A program that runs helpers (none of those measured here does, so far) is
            # charged for them too: the sampled resident sets of the whole process tree.
            if kids := process.children(recursive=True):
                tree = process.memory_info().rss
                for kid in kids:
                    with _quiet_psutil():
                        tree += kid.memory_info().rss
                self.peak_kib = max(self.peak_kib, tree // 1024)

    @property
    def peak_mib(self) -> float:
        return self.peak_kib / 1024

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> int:
        """SIGTERM (a clean stop: checkpoint, commit, leave), SIGKILL after a minute."""
        if self.alive():
            self.sample()
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        if self.proc in CHILDREN:
            CHILDREN.remove(self.proc)
        return code

    def log_lines(self) -> list[str]:
        return self.log.read_text("utf-8", "replace").splitlines()


def kill_children() -> None:
    """Kill and reap every child still running: the teardown of an interrupted run."""
    for proc in list(CHILDREN):
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        CHILDREN.remove(proc)


# -- CPU and memory ------------------------------------------------------------------------


@contextmanager
def _quiet_psutil() -> Iterator[None]:
    try:
        yield
    except (psutil.Error, OSError):
        pass


def _vm_hwm_kib(pid: int | str) -> int | None:
    """The kernel's high-water mark of the process's resident set (Linux), in KiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def peak_rss_mib(pid: int | str = "self") -> float | None:
    """The process's peak RSS in MiB (None where the kernel does not say)."""
    kib = _vm_hwm_kib(pid)
    return None if kib is None else kib / 1024


def reset_peak_rss() -> bool:
    """Reset this process's VmHWM to its current RSS (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _busy_s() -> float:
    """CPU seconds all CPUs have spent busy since boot (steal included: another VM's use)."""
    t = psutil.cpu_times()
    fields = ("user", "nice", "system", "irq", "softirq", "steal")
    return float(sum(getattr(t, name, 0.0) for name in fields))


def _process_cpu_s(pid: int) -> float:
    try:
        t = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return 0.0
    return float(t.user + t.system)


class CpuMeter:
    """CPU used by other processes: not this one, not the broker, not the measured child."""

    def __init__(self) -> None:
        self.wall, self.busy, self.ours = time.perf_counter(), _busy_s(), self._ours()

    @staticmethod
    def _ours() -> float:
        return _process_cpu_s(os.getpid()) + sum(_process_cpu_s(p) for p in OUR_PIDS)

    def others_cores(self, child_cpu_s: float | None) -> float:
        wall = time.perf_counter() - self.wall
        if wall <= 0:
            return 0.0
        others = _busy_s() - self.busy - (self._ours() - self.ours) - (child_cpu_s or 0.0)
        return max(others, 0.0) / wall


def cores() -> int:
    """The CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0


def busy_note() -> str:
    """How busy the CPUs are just before measuring: other work makes the timings noisy."""
    busy = psutil.cpu_percent(interval=1.0)
    note = f"CPU use by other processes just before measuring: {busy:.0f}%"
    if busy > BUSY_PERCENT:
        note += " -- the machine is busy: expect noisy timings, run again when it is idle"
    return note


# -- what the figures were measured on -----------------------------------------------------


def machine_lines() -> list[str]:
    """The machine, Python, Polars and LinePulse revision: printed before any figure."""
    cpus = os.cpu_count() or 0
    memory = psutil.virtual_memory()
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return [
        f"machine: {platform.machine()}, {_cpu_model()}; nproc {cores()} (of {cpus}); "
        f"RAM {memory.total / 2**30:.1f} GiB ({memory.available / 2**30:.1f} GiB free); "
        f"load average {load}",
        f"python {platform.python_version()} ({sys.executable}); polars {pl.__version__}; "
        f"POLARS_MAX_THREADS={os.environ.get('POLARS_MAX_THREADS', '(unset)')}; "
        f"linepulse {_git_revision()}",
    ]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _git_revision() -> str:
    here = Path(__file__).resolve().parent

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=here, capture_output=True, text=True, check=True
        ).stdout.strip()

    try:
        head = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return "(not a git checkout)"
    return f"{head}{' + uncommitted changes' if dirty else ''}"


def version(package: str) -> str:
    """The installed version of a Python package, or "not installed"."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def kafka_version() -> str:
    """The version of the broker deploy/kafka runs, from its jar's name."""
    jars = sorted((KAFKA_SH.parent / "lib").glob("kafka_2.13-*.jar"))
    return jars[0].stem.removeprefix("kafka_2.13-") if jars else "unknown"


def mark(passed: bool) -> str:
    """A figure beside its goal: printed, never asserted."""
    return "PASS" if passed else "MISS"


def write_lines(path: Path, lines: list[str]) -> None:
    path.write_text("\n".join(lines) + "\n")


def write_results(out: Path, args: argparse.Namespace, **sections: object) -> None:
    """results.json in `out`: the arguments the run was given and its figures; then the
    artefacts line, the report's last."""
    given = {
        k: str(v) if isinstance(v, Path) else sorted(v) if isinstance(v, set) else v
        for k, v in vars(args).items()
    }
    data = {"args": given, **sections}
    (out / "results.json").write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2))
    print(f"artefacts: {out}")


# -- arguments -----------------------------------------------------------------------------


def add_common_arguments(parser: argparse.ArgumentParser, timeout: str | None = None) -> None:
    """--seed and --out (the generated inputs and the artefacts), and --timeout with
    `timeout` as its help where the benchmark gives up on a run."""
    parser.add_argument("--seed", type=int, default=42, help="default: 42")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"default: {DEFAULT_OUT}")
    if timeout is not None:
        parser.add_argument("--timeout", type=float, default=None, metavar="S", help=timeout)


async def stop_load(readers: Sequence[asyncio.Task[Any]], *clients: Any) -> None:
    """End a measured load: cancel its reader tasks, wait for them, then stop each client
    (an httpx client is closed with `aclose`, a Kafka producer or consumer with `stop`)."""
    for reader in readers:
        reader.cancel()
    for reader in readers:
        with contextlib.suppress(asyncio.CancelledError):
            await reader
    for client in clients:
        await (client.aclose() if hasattr(client, "aclose") else client.stop())
