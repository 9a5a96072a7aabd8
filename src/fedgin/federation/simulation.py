"""Simulation: the whole federation on one machine on Flower's simulation engine (Ray backend)."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch
from flwr.app import Context
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from rich.console import Console

from fedgin.config import RunConfig
from fedgin.errors import ConfigError, DataError, FedginError
from fedgin.federation.client import client_run_config
from fedgin.federation.flower import flower_env
from fedgin.federation.messaging import Stopped
from fedgin.federation.screening import FederationError
from fedgin.federation.server import (
    FederationInterrupted,
    FederationResult,
    FederationServer,
    server_validation,
)
from fedgin.processes import Guard, descendants, start_time
from fedgin.training.data import build_train_slices

#: Seconds a Ctrl-C waits for the server thread to end its round cleanly before it is stopped.
INTERRUPT_GRACE_S = 3.0
#: Seconds Ray's processes get to end after ray.shutdown() before they are killed.
RAY_EXIT_WAIT_S = 2.0
#: Seconds from a Ctrl-C to the process's exit at the latest (Ray killed if it has not stopped by then).
FORCED_EXIT_S = 6.0
#: The only address Ray listens on.
LOOPBACK = "127.0.0.1"


def check_sites(config: RunConfig) -> None:
    """Open every site's caches and the server's evaluation caches before Flower and Ray start.

    A simulated site whose cache is missing or holds no training cases for its data spec would otherwise
    be left out of every round; refuse the run with one line naming the site and the cache instead. The
    check builds each site's training set as its ClientApp does (splits, domains, skip/max cases).
    """
    for spec in config.federation.clients:
        try:
            train_set = build_train_slices(client_run_config(config, spec, 1))
        except DataError as error:
            raise DataError(error.path, f"{error.problem} (site {spec.name!r})") from None
        except FedginError as error:
            raise ConfigError(f"site {spec.name!r}: {error}") from None
        if len(train_set) == 0:
            caches = ", ".join(str(data.cache) for data in spec.data)
            raise ConfigError(f"site {spec.name!r}: no training slices in {caches}")
    try:
        server_validation(config)
    except DataError as error:
        raise DataError(error.path, f"{error.problem} (the server's evaluation cases)") from None
    except FedginError as error:
        raise ConfigError(f"server evaluation: {error}") from None


def backend_config(config: RunConfig) -> dict:
    """Ray resources: at most two clients train at a time (one on a GPU), each built inside its call."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    use_gpu = torch.cuda.is_available() and config.train.device != "cpu"
    return {
        "init_args": {
            "num_cpus": cpus,
            "num_gpus": 1 if use_gpu else 0,
            # Every Ray server on loopback (GCS, raylet, object manager, workers, agents): anyone who reaches
            # the GCS port can run code in a worker. See `start_ray` for what makes Ray keep this address.
            "_node_ip_address": LOOPBACK,
            "include_dashboard": False,
            "dashboard_host": LOOPBACK,
            "logging_level": "ERROR",
            "log_to_driver": True,
        },
        "client_resources": {"num_cpus": max(1, cpus // 2), "num_gpus": 1.0 if use_gpu else 0.0},
    }


def run_federation(
    config: RunConfig,
    resume: bool = False,
    overwrite: bool = False,
    console: Console | None = None,
    *,
    stop_after: int | None = None,
    client_app: ClientApp | None = None,
    allow_changed_settings: bool = False,
) -> FederationResult:
    """Run (or with `resume`, continue) a federation on Flower's simulation engine.

    One virtual SuperNode per entry of `federation.clients` (partition id = position in the list).
    `stop_after` ends the call after that round (as if the server were killed; used to test resuming);
    `client_app` replaces fedgin's ClientApp (fault injection in tests); `allow_changed_settings`: resume
    with settings other than the checkpoint's (`--allow-changed-settings`).

    Every site's caches are checked before Flower and Ray start. A site left out of one round is only
    reported; a site that contributed to no round of the run raises FederationError once the results are
    written. Ctrl-C (KeyboardInterrupt) ends the round in progress without committing it, shuts Ray down
    and raises FederationInterrupted; checkpoints/last.pt keeps the last finished round for `--resume`.
    """
    from fedgin.federation.client import app as default_client_app

    console = console or Console()
    config.federation.require_clients()
    check_sites(config)
    server = FederationServer.open(
        config,
        console,
        resume=resume,
        overwrite=overwrite,
        stop_after=stop_after,
        wait_for_all_sites=True,
        allow_changed_settings=allow_changed_settings,
    )
    run_dir = server.run_dir

    if server.resumed:
        console.print(f"resuming {run_dir} after round {server.round}")
    federation = config.federation
    console.print(
        f"[bold]{config.name}[/]: {len(federation.clients)} clients "
        f"({', '.join(client.name for client in federation.clients)}), {federation.strategy}"
        f"{' + FedBN' if federation.fedbn else ''}"
        f"{f' + DP (z = {federation.privacy.noise_multiplier:g})' if federation.privacy else ''}"
        f"{' + SecAgg+' if federation.secagg else ''}, {federation.rounds} rounds, GIN "
        f"{'on' if config.gin.enabled else 'off'}"
    )
    started = time.perf_counter()
    if server.round < federation.rounds:
        _simulate(config, server, client_app or default_client_app)
    server.write_summary(time.perf_counter() - started, engine="simulation")
    server.check_contributions()
    return server.result


def _simulate(config: RunConfig, server: FederationServer, client_app: ClientApp) -> None:
    """The rounds on Flower's simulation engine; Ctrl-C -> FederationInterrupted naming the round kept
    (unless every round was committed by then)."""
    try:
        simulate(
            config,
            server.main,
            client_app,
            server.interrupt,
            server.run_dir / ".flwr",
            interrupted=server.interrupted_message,
        )
    except KeyboardInterrupt as interrupt:
        if server.round < config.federation.rounds:
            raise FederationInterrupted(str(interrupt)) from None
        # The last round was committed before the Ctrl-C took effect: the run is complete.


def simulate(
    config: RunConfig,
    main: Callable[[Grid, Context], None],
    client_app: ClientApp,
    interrupt: Callable[[float], object],
    flwr_home: Path,
    *,
    interrupted: Callable[[], str],
) -> None:
    """Run a ServerApp `main` against one virtual SuperNode per site (Flower's simulation engine, Ray),
    with Ray out of reach of Ctrl-C and shut down after.

    Used for training (`FederationServer.main`), federated statistics and cross-site evaluation. A
    Ctrl-C is never raised inside Flower's engine (see `CtrlC`): `interrupt(grace_s)` stops `main`, the
    engine ends in order, Ray is stopped and KeyboardInterrupt(`interrupted()`) raised here. A failure
    of the engine itself is a FederationError. Flower's environment (no telemetry, no runtime installs,
    FLWR_HOME = `flwr_home`) is set in this process, which Ray's workers inherit.
    """
    from flwr.simulation import run_simulation

    os.environ.update(flower_env(flwr_home))

    ray_processes = RayProcesses()
    ctrl_c = CtrlC(interrupt, interrupted, ray_processes)
    server_app = ServerApp()
    server_app.main()(ctrl_c.ends(main))
    flwr_logger = logging.getLogger("flwr")
    previous_level = flwr_logger.level
    # Flower's own notices and its tracebacks of client errors (one per failing client and round) are not
    # the user's concern: fedgin reports left-out clients (one line each) and failed rounds itself.
    flwr_logger.setLevel(logging.CRITICAL)
    ctrl_c.install()
    try:
        ray_processes.watch()
        start_ray(config)
        if not ctrl_c.requested.is_set():
            run_simulation(
                server_app=server_app,
                client_app=client_app,
                num_supernodes=len(config.federation.clients),
                backend_config=backend_config(config),
            )
    except Exception as error:
        if ctrl_c.requested.is_set():
            pass  # what the stop broke (a Ray call cut short): the interrupt is what is reported
        elif isinstance(error, RuntimeError) and str(error) == "An error was encountered. Ending simulation.":
            # Flower's wrapper around what broke the simulation engine (Ray failed to start, no actor fits).
            cause: BaseException = error
            while cause.__cause__ is not None:
                cause = cause.__cause__
            raise FederationError(
                f"the simulation engine failed: {type(cause).__name__}: {cause}; the last completed round "
                "is kept in checkpoints/last.pt (continue with --resume)"
            ) from error
        else:
            raise
    finally:
        flwr_logger.setLevel(previous_level)
        ctrl_c.join()
        ray_processes.stop(RAY_EXIT_WAIT_S)
        ctrl_c.close()
    if ctrl_c.requested.is_set():
        raise KeyboardInterrupt(interrupted())


class CtrlC:
    """Ctrl-C (SIGINT) while a simulation runs: stop it in order from a thread, then raise in the driver.

    Raised inside Flower's engine, a KeyboardInterrupt made it shut Ray down at once while its worker
    threads still waited on ClientApp actors (in Ray's CoreWorker::Get), which then never returned: the
    process hung at exit, joining them. Instead the first Ctrl-C stops the ServerApp's `main`
    (`interrupt(grace_s)`: it ends its round loop or its requests, and Flower's engine then stops its
    threads) and kills the ClientApp actors still training, so that every thread waiting on one gets an
    error at once; the engine then stops Ray itself, and `simulate` raises KeyboardInterrupt. Later
    Ctrl-Cs are ignored until then. Should all that take more than FORCED_EXIT_S (a Ray start under way
    cannot be cut short), Ray's processes are killed and the process exits at once (status 130) with
    the `interrupted()` line. The handler is set from the main thread only (the one Python delivers
    signals to).
    """

    def __init__(
        self,
        interrupt: Callable[[float], object],
        interrupted: Callable[[], str],
        ray_processes: RayProcesses,
    ) -> None:
        self.interrupt = interrupt
        self.interrupted = interrupted
        self.ray_processes = ray_processes
        self.requested = threading.Event()
        #: Set once `main` is stopped and the ClientApp actors killed.
        self.stopped = threading.Event()
        #: Set once `simulate` has stopped Ray (in order): the forced exit is then not needed.
        self.finished = threading.Event()
        self._stopper: threading.Thread | None = None
        self._previous: Callable | int | None = None
        self._installed = False

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._on_sigint)
            self._installed = True

    def uninstall(self) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)
            self._installed = False

    def _on_sigint(self, signum: int, frame: object) -> None:
        if self.requested.is_set():
            return
        self.requested.set()
        self._stopper = threading.Thread(target=self._stop, name="fedgin-ctrl-c", daemon=True)
        self._stopper.start()

    def _stop(self) -> None:
        # The ServerApp first: with its round abandoned, the errors that the killed actors' replies
        # become are never taken for the round's results.
        deadline = time.monotonic() + FORCED_EXIT_S
        self.interrupt(INTERRUPT_GRACE_S)
        self.ray_processes.kill_client_apps()
        self.stopped.set()
        if self.finished.wait(max(0.0, deadline - time.monotonic())):
            return
        self.ray_processes.kill()
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            print(
                f"{self.interrupted()} (Ray was killed: it did not stop in time)", file=sys.stderr, flush=True
            )
        os._exit(130)

    def join(self) -> None:
        """After a Ctrl-C: wait until `main` is stopped and the ClientApp actors are killed."""
        if self.requested.is_set():
            self.stopped.wait()

    def close(self) -> None:
        """Ray is stopped: end the Ctrl-C thread now and restore the SIGINT handler.

        Now, not during the interpreter's exit: the thread refers to the server (through `interrupt`),
        and a daemon thread that frees a model's tensors while the interpreter finalizes aborts it.
        """
        self.finished.set()
        if self._stopper is not None:
            self._stopper.join()
        self.uninstall()

    def ends(self, main: Callable[[Grid, Context], None]) -> Callable[[Grid, Context], None]:
        """`main`, ending normally when a Ctrl-C stopped it (after an error Flower would wait 3 s more
        for the ServerApp's context)."""

        def run(grid: Grid, context: Context) -> None:
            try:
                main(grid, context)
            except Stopped:
                if not self.requested.is_set():
                    raise

        return run


def start_ray(config: RunConfig) -> None:
    """Start Ray as Flower would, but on loopback only and with SIGINT blocked in every process it starts.

    A Ctrl-C in a terminal goes to the whole process group: Ray's workers would die mid-round (an
    ActorDiedError per client) and its raylet might go before the driver could shut it down. With SIGINT
    blocked while Ray starts its processes (the mask is inherited by them and by the workers they start),
    only the driver gets the interrupt, and it stops Ray itself. A Ctrl-C during the start stays pending
    until Ray is up (`CtrlC` then stops it).
    """
    import ray

    if ray.is_initialized():
        return
    # What Flower's RayBackend.init_ray does: the workers must import fedgin and the test's ClientApps.
    pythonpath = os.pathsep.join(sys.path)
    if os.environ.get("PYTHONPATH"):
        pythonpath = f"{pythonpath}{os.pathsep}{os.environ['PYTHONPATH']}"
    os.environ["PYTHONPATH"] = pythonpath
    # FLWR_LOG_LEVEL: Flower's log in the workers only ("Manually terminating ClientAppActor" at every end
    # of a run); not in os.environ, where it would silence the Flower processes of a later deployment.
    workers_env = {"PYTHONPATH": pythonpath, "FLWR_LOG_LEVEL": "ERROR"}
    # Ray replaces a loopback node address by the host's outward one (for other nodes to join) unless
    # clusters are off (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0), which it reads once, when imported: the
    # variable for Ray's own processes, the constant for this one.
    import ray._private.ray_constants as ray_constants

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        ray.init(runtime_env={"env_vars": workers_env}, **backend_config(config)["init_args"])
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


class RayProcesses:
    """The processes Ray starts under this one, recorded while the simulation runs, stopped at its end.

    ray.shutdown() stops the raylet and the GCS, but a worker busy training (a client still running past
    the round timeout) outlives them for as long as its local training takes, orphaned and out of reach
    of `descendants()`. So they are recorded every second while Ray runs and killed if still alive
    shortly after ray.shutdown(). A process is known by pid and start time, so that a pid reused by
    another process is never signalled. Should this process be killed, a `Guard` process kills them.
    """

    def __init__(self) -> None:
        self.before = {pid for pid, _ in _ray_descendants()}
        self.seen: set[tuple[int, str]] = set()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._guard: Guard | None = None

    def record(self) -> None:
        self.seen.update(process for process in _ray_descendants() if process[0] not in self.before)

    def watch(self, interval_s: float = 1.0) -> None:
        """Record in a background thread (Ray starts its workers while the rounds run); call it before
        Ray starts, so that the guard covers all of Ray's processes."""
        if sys.platform.startswith("linux"):
            self._guard = Guard()
            self.before.add(self._guard.process.pid)
        self.record()

        def loop() -> None:
            while not self._done.wait(interval_s):
                self.record()

        self._thread = threading.Thread(target=loop, name="fedgin-ray-processes", daemon=True)
        self._thread.start()

    def kill_client_apps(self) -> None:
        """SIGKILL the ClientApp actors (the processes Ray names after Flower's ClientAppActor)."""
        for pid, started in _ray_descendants(b"ray::ClientAppActor"):
            if start_time(pid) == started:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)

    def stop(self, wait_s: float) -> None:
        """ray.shutdown(), then SIGKILL for Ray's processes still alive `wait_s` later."""
        self._done.set()
        if self._thread is not None:
            self.record()
        _stop_ray()
        deadline = time.monotonic() + wait_s
        while self.alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        self.kill()
        if self._guard is not None:
            self._guard.release()

    def alive(self) -> list[int]:
        return [pid for pid, started in self.seen if start_time(pid) == started]

    def kill(self) -> None:
        """SIGKILL for every process of Ray's still alive."""
        if self._thread is not None:
            self.record()
        for pid in self.alive():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


def _ray_descendants(prefix: bytes = b"") -> list[tuple[int, str]]:
    """(pid, start time) of this process's descendants that belong to Ray, or whose command line starts
    with `prefix` (Linux /proc; [] elsewhere)."""
    found = []
    for pid in descendants(os.getpid()):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"ray" not in command or not command.startswith(prefix):
            continue
        started = start_time(pid)
        if started is not None:
            found.append((pid, started))
    return found


def _stop_ray() -> None:
    """Flower shuts Ray down at the end of a simulation; make sure of it when a run fails half-way."""
    try:
        import ray
    except ImportError:
        return
    if ray.is_initialized():
        ray.shutdown()
