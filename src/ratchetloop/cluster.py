"""Evaluations on a Ray cluster's bench nodes (`ratchet run --ray [ADDRESS]`).

Every node started with a `bench` resource (`ray start ... --resources '{"bench": 1}'`) is
one benchmark host. `RayEvaluator.run` is evaluate.run_eval sent to one of them: the
candidate and its references go in one Ray task, so they are always timed together on one
node, and that node runs the same sandboxed eval.py, integrity checks and host-wide bench
lock as a local run does. Proposals, memory, SCORES and git never leave the driver.

How the experiment gets there: once per run (per folder) the driver packs what
evaluate.stage_workdir would copy -- no state files, no runs/ -- into a tarball and puts
it in Ray's object store; each task fetches it from there, unpacks it into a temp dir of
its own and deletes it afterwards. No shared filesystem is assumed. The in-memory contract
travels as JSON beside it, so the node judges exactly what the driver loaded. ratchetloop
itself must be installed on every node (the task is ratchetloop code, pickled by name).

Keys: nothing of the driver's environment is sent (the task's runtime env is empty), and
the node's own environment reaches eval.py only through the sandbox's allow-list, which
drops anything named like a secret.

A node that dies in the middle of an evaluation (or its worker) is a system failure: Ray
runs the task again on another bench node (`RETRIES`); run() returns once, with the
result of the attempt that finished, so nothing is recorded twice.

Progress lines (the paired timing's rounds, for the live view) come back through a
`Mailbox` actor on the driver's node: the task posts each one there, the waiting run()
collects them a few times a second. They only ever inform the display.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import shutil
import socket
import tarfile
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import evaluate
from .errors import RatchetError
from .evaluate import EvalResult, safe_name
from .experiment import Experiment
from .files import atomic_write_bytes
from .status import TimingProgress

BENCH = "bench"  # the custom resource that marks a benchmark host
RETRIES = 3  # runs of a task again after its node or worker died
POLL_SECONDS = 2.0  # how often a waiting run() checks that a bench node is still alive
TEMP_PREFIX = "ratchet-ray-"  # + the worker's pid: a task's private copy of the folder
PROGRESS_SECONDS = 0.25  # how often it collects progress lines, when someone listens
LOOPBACK = ("127.0.0.1", "localhost", "::1")
CONNECT_SECONDS = 5.0  # for the head's port to answer, before Ray is asked to connect
START_HINT = "start one with `ray start --head`, or name its address: --ray HOST:PORT"
INSTALL = "pip install 'ratchetloop[ray]'"
NO_BENCH = ("the Ray cluster at {addr} has no node with a `bench` resource: start each"
            " benchmark host with `ray start --address <head> --resources '{{\"bench\": 1}}'`"
            " (one bench slot per host)")


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise RatchetError(f"--ray needs Ray: {INSTALL}") from None
    return ray


def connect(address: str) -> bool:
    """Join the cluster at `address` ("auto": the one running here, or $RAY_ADDRESS) as a
    driver; True when this call connected (and close() should disconnect)."""
    ray = _ray()
    if ray.is_initialized():
        return False
    target = _target(address)
    if target is not None:
        _check_reachable(address, *target)
        if target[0] in LOOPBACK:
            # Ray turns a loopback address into this host's network address before it
            # connects (ray-project/ray#59110), which fails for a cluster whose nodes
            # listen on 127.0.0.1 (a local test cluster): the driver stays on loopback too.
            from ray._private import ray_constants

            ray_constants.ENABLE_RAY_CLUSTER = False  # get_node_ip_address(): loopback
    try:
        ray.init(address=address, ignore_reinit_error=True, log_to_driver=False,
                 logging_level=logging.WARNING, configure_logging=False,
                 namespace="ratchetloop")
    except (ConnectionError, ValueError, RuntimeError) as exc:
        why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RatchetError(f"cannot connect to the Ray cluster at {address}: {why}"
                           f" ({START_HINT})") from None
    return True


def _target(address: str) -> tuple[str, int] | None:
    """The head's (host, port) that `address` means, when it can be told without
    connecting ("auto": $RAY_ADDRESS or the cluster started here; not ray:// clients)."""
    from ray._private import services

    try:
        found = (services.get_ray_address_from_environment(address, None)
                 if address == "auto" else address)
    except Exception:  # noqa: BLE001 - discovery is Ray's; ray.init reports its failures
        return None
    if not isinstance(found, str) or "://" in found or ":" not in found:
        return None
    host, _, port = found.rpartition(":")
    try:
        return host.strip("[]"), int(port)
    except ValueError:
        return None


def _check_reachable(address: str, host: str, port: int) -> None:
    """Fail in seconds where ray.init would retry a dead address for minutes."""
    try:
        socket.create_connection((host, port), timeout=CONNECT_SECONDS).close()
    except OSError as exc:
        raise RatchetError(f"cannot connect to the Ray cluster at {address}: nothing answers"
                           f" at {host}:{port} ({exc.strerror or exc}; {START_HINT})") from None


def bench_slots(nodes: list[dict[str, Any]]) -> int:
    """Evaluations that may run at once: the live nodes' bench resources, summed."""
    return int(sum(n.get("Resources", {}).get(BENCH, 0) for n in nodes if n.get("Alive")))


def pack(exp: Experiment) -> bytes:
    """The experiment folder as evaluate.stage_workdir copies it, as a gzipped tarball."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", dereference=True) as tar:
        for item in sorted(exp.root.iterdir()):
            if item.name in evaluate.STATE_NAMES or item.name.startswith("."):
                continue
            tar.add(item, arcname=item.name, filter=_skip_state)
    return buffer.getvalue()


def _skip_state(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    return None if Path(info.name).name in evaluate.STATE_NAMES else info


def unpack(data: bytes, dest: Path) -> None:
    """A tarball from pack() into `dest`: plain files and folders inside it, nothing else
    (no links, devices or paths out; tarfile's "data" filter too where Python has it)."""
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for member in tar.getmembers():
            parts = Path(member.name).parts
            if not (member.isfile() or member.isdir()) or member.name.startswith("/") \
                    or ".." in parts:
                raise RatchetError(f"experiment bundle: refused member {member.name!r}")
        if hasattr(tarfile, "data_filter"):  # Python 3.11.4+
            tar.extractall(dest, filter="data")
        else:
            tar.extractall(dest)  # noqa: S202 - every member checked above


def sweep(parent: Path) -> None:
    """Remove the temp dirs of tasks whose worker was killed mid-task (its node died, or
    Ray killed it): each is named after its worker's pid, and that pid is gone."""
    for folder in parent.glob(f"{TEMP_PREFIX}*-*"):
        pid = folder.name[len(TEMP_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's
    return True


class Mailbox:
    """A Ray actor on the driver's node: progress lines from the nodes, by evaluation."""

    def __init__(self) -> None:
        self.lines: dict[str, list[dict[str, Any]]] = {}

    def put(self, key: str, fields: dict[str, Any]) -> None:
        self.lines.setdefault(key, []).append(fields)

    def take(self, key: str) -> list[dict[str, Any]]:
        return self.lines.pop(key, [])


def evaluate_on_node(bundle: bytes, folder: str, contract: str, candidate_source: str,
                     references: dict[str, str], seed: int, validate: bool,
                     mailbox: Any = None, key: str = "") -> dict[str, Any]:
    """The Ray task: one evaluate.run_eval on this node, from a private copy of the folder.

    Returns the EvalResult as JSON, the *.log files it kept (name -> bytes) and where it
    ran. Progress lines go to `mailbox` (under `key`) when one is given."""
    import ray

    from . import __version__

    posted: list[Any] = []

    def tell(progress: TimingProgress) -> None:
        posted.append(mailbox.put.remote(key, dataclasses.asdict(progress)))

    sweep(Path(tempfile.gettempdir()))
    with tempfile.TemporaryDirectory(prefix=f"{TEMP_PREFIX}{os.getpid()}-") as tmp:
        root = Path(tmp) / safe_name(folder)
        unpack(bundle, root)
        exp = Experiment.model_validate_json(contract)
        exp.root = root
        kept = Path(tmp) / "logs"
        result = evaluate.run_eval(exp, candidate_source, references, seed=seed,
                                   validate=validate, keep_workdir=kept,
                                   progress=None if mailbox is None else tell)
        logs = {p.name: p.read_bytes() for p in sorted(kept.glob("*.log"))
                if p.is_file() and not p.is_symlink()} if kept.is_dir() else {}
    ray.wait(posted, num_returns=len(posted), timeout=POLL_SECONDS)  # delivered before the reply
    node = {"id": ray.get_runtime_context().get_node_id(), "host": socket.gethostname(),
            "ip": ray.util.get_node_ip_address(), "pid": os.getpid(), "root": str(root),
            "ratchetloop": __version__}
    return {"result": result.model_dump_json(), "logs": logs, "node": node}


class RayEvaluator:
    """evaluate.run_eval on a Ray cluster's bench nodes; `slots` of them at once.

    Thread-safe: the loop's scheduler calls run() from several threads, each blocking
    until its evaluation is back."""

    def __init__(self, address: str = "auto") -> None:
        self.address = address
        self._owns = connect(address)
        ray = _ray()
        self.slots = bench_slots(ray.nodes())
        if self.slots < 1:
            self.close()
            raise RatchetError(NO_BENCH.format(addr=address))
        self._task = ray.remote(evaluate_on_node).options(
            resources={BENCH: 1}, num_cpus=0, max_retries=RETRIES, retry_exceptions=False,
            runtime_env={})  # nothing of the driver's environment (keys) goes along
        self._bundles: dict[Path, tuple[Any, str]] = {}
        self._mailbox: Any = None  # made when someone first listens to progress
        self._guard = threading.Lock()

    def _bundle(self, exp: Experiment) -> tuple[Any, str]:
        """The folder's tarball in the object store (packed once per run) and the
        contract as JSON."""
        with self._guard:
            if exp.root not in self._bundles:
                self._bundles[exp.root] = (_ray().put(pack(exp)), exp.model_dump_json())
            return self._bundles[exp.root]

    def _listener(self) -> Any:
        """The Mailbox actor, on this (the driver's) node."""
        ray = _ray()
        with self._guard:
            if self._mailbox is None:
                from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

                here = NodeAffinitySchedulingStrategy(
                    node_id=ray.get_runtime_context().get_node_id(), soft=True)
                self._mailbox = ray.remote(Mailbox).options(
                    num_cpus=0, scheduling_strategy=here).remote()
            return self._mailbox

    def run(self, exp: Experiment, candidate_source: str, references: dict[str, str], *,
            seed: int, validate: bool = True, keep_workdir: Path | None = None,
            progress: Callable[[Any], None] | None = None) -> EvalResult:
        """evaluate.run_eval's contract, on one bench node; `progress` hears the node's
        progress lines."""
        ray = _ray()
        bundle, contract = self._bundle(exp)
        mailbox, key = (None, "") if progress is None else (self._listener(), uuid.uuid4().hex)
        ref = self._task.remote(bundle, exp.root.name, contract, candidate_source,
                                dict(references), seed, validate, mailbox, key)
        reply = self._wait(ray, ref, None if progress is None else
                           lambda: self._relay(ray, key, progress))
        result = EvalResult.model_validate_json(reply["result"])
        result.info["node"] = reply["node"]
        if keep_workdir is not None:
            write_logs(keep_workdir, reply["logs"])
        return result

    def _relay(self, ray: Any, key: str, progress: Callable[[Any], None]) -> None:
        """Hand the progress lines posted so far to `progress` (display only: a line
        that does not fit is skipped, and a lost mailbox costs the display, not the run)."""
        try:
            lines = ray.get(self._mailbox.take.remote(key), timeout=POLL_SECONDS)
        except ray.exceptions.RayError:
            return
        for fields in lines:
            try:
                progress(TimingProgress(**fields))
            except TypeError:
                pass

    def _wait(self, ray: Any, ref: Any, relay: Callable[[], None] | None) -> dict[str, Any]:
        """The task's reply (`relay` runs between looks); RatchetError when it cannot
        come (no bench node left, retries used up, the node's ratchetloop broken). Ctrl-C
        cancels the task (the node's sandbox then kills the candidate's tree)."""
        checked = time.monotonic()
        try:
            while True:
                done, _ = ray.wait([ref], timeout=POLL_SECONDS if relay is None
                                   else PROGRESS_SECONDS)
                if relay is not None:
                    relay()
                if done:
                    return dict(ray.get(ref))
                if time.monotonic() - checked < POLL_SECONDS:
                    continue
                checked = time.monotonic()
                if bench_slots(ray.nodes()) < 1:
                    ray.cancel(ref)
                    raise RatchetError(f"no live node with a `bench` resource is left in"
                                       f" the Ray cluster at {self.address}")
        except KeyboardInterrupt:
            ray.cancel(ref)
            raise
        except ray.exceptions.RayTaskError as exc:
            cause = exc.cause if isinstance(exc.cause, BaseException) else exc
            if isinstance(cause, RatchetError):
                raise RatchetError(f"on a bench node: {cause}") from None
            why = (str(cause).strip().splitlines() or [""])[0][:300]
            raise RatchetError(f"an evaluation failed on a bench node of {self.address}:"
                               f" {type(cause).__name__}: {why} (is the same ratchetloop"
                               " installed there?)") from None
        except ray.exceptions.RayError as exc:
            raise RatchetError(f"an evaluation was lost on the Ray cluster at {self.address}"
                               f" after {RETRIES + 1} attempts: {type(exc).__name__}") from None

    def close(self) -> None:
        """Free the tarballs and the mailbox; disconnect when this evaluator connected."""
        with getattr(self, "_guard", threading.Lock()):
            getattr(self, "_bundles", {}).clear()
            mailbox, self._mailbox = getattr(self, "_mailbox", None), None
        if mailbox is not None:
            _ray().kill(mailbox)
        if self._owns:
            self._owns = False
            _ray().shutdown()


def write_logs(dest: Path, logs: dict[str, bytes]) -> None:
    """A node's *.log files into runs/<n>/ here: plain names only, capped as locally."""
    dest.mkdir(parents=True, exist_ok=True)
    budget = evaluate.LOG_LIMIT
    for name, data in sorted(logs.items()):
        if safe_name(name) != name or not name.endswith(".log"):
            continue
        data = bytes(data)[:max(budget, 0)]
        budget -= len(data)
        atomic_write_bytes(dest / name, data, durable=False)


# --------------------------------------------------------------------------- ratchet doctor


def node_rows(address: str) -> list[tuple[str, str, str]]:
    """(check, status, detail) rows for `ratchet doctor --ray`: the cluster's nodes, each
    with its address, whether it is alive, CPUs and bench slots."""
    try:
        owns = connect(address)
    except RatchetError as exc:
        return [("ray cluster", "unreachable" if "connect" in str(exc) else "missing",
                 str(exc))]
    ray = _ray()
    try:
        nodes = ray.nodes()
        slots = bench_slots(nodes)
        alive = sum(1 for n in nodes if n.get("Alive"))
        summary = f"{address}: {_count(alive, 'live node')}, {_count(slots, 'bench slot')}"
        if not slots:
            summary += " -- " + NO_BENCH.format(addr=address)
        rows = [("ray cluster", "ok" if slots else "missing", summary)]
        for n in sorted(nodes, key=lambda n: (not n.get("Alive"), n.get("NodeID", ""))):
            rows.append(_node_row(n))
        return rows
    finally:
        if owns:
            ray.shutdown()


def _node_row(node: dict[str, Any]) -> tuple[str, str, str]:
    res = node.get("Resources", {})
    bench, alive = int(res.get(BENCH, 0)), bool(node.get("Alive"))
    status = ("ok" if bench else "off") if alive else "warn"
    where = f"{node.get('NodeManagerAddress', '?')} ({node.get('NodeManagerHostname', '?')})"
    return (f"ray node {str(node.get('NodeID', ''))[:12]}", status,
            f"{where}, {'alive' if alive else 'dead'}, {res.get('CPU', 0):g} CPUs,"
            f" {_count(bench, 'bench slot')}")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' * (n != 1)}"
