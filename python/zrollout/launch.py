"""Starting and stopping ``zrollout serve`` from Python.

``launch(model=..., **serve_flags)`` starts one server process, waits until it answers
``health``, and returns a :class:`Server` (a context manager: leaving it sends SIGTERM, waits for
the drain, then kills on timeout). Keyword flags become ``zrollout serve`` options
(``max_running=64`` -> ``--max-running 64``, ``kv_lazy_pages=True`` -> ``--kv-lazy-pages``).
``tp=T`` above 1 starts the engine under ``mpirun -np T`` (tensor parallelism spans MPI ranks).

The binary is ``$ZROLLOUT_BIN``, else the build tree next to this package
(``<repo>/build/launch/zrollout``), else the path the native module was built with, else
``zrollout`` on ``PATH``.

Endpoints: by default an ``ipc://`` socket in a fresh temporary folder (no port to race for);
``transport="tcp"`` binds a free loopback port (asked of the kernel, then handed to the server; if
another process takes it first the server fails to bind and the launch retries with a new port).
"""

from __future__ import annotations

import atexit
import os
import socket
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from . import errors
from .client import Client

_PACKAGE_DIR = Path(__file__).resolve().parent
_BIND_RETRIES = 3
_LEVELS = {"warning": "warn", "critical": "critical", "fatal": "critical"}  # Python names -> spdlog


def find_binary() -> str:
    """The ``zrollout`` executable (see the module comment for the search order)."""
    env = os.environ.get("ZROLLOUT_BIN")
    if env:
        if not os.access(env, os.X_OK):
            raise errors.NotFound(f"ZROLLOUT_BIN: {env} is not an executable file")
        return env
    candidates = [_PACKAGE_DIR.parent.parent / "build" / "launch" / "zrollout"]
    if not candidates[0].is_file():
        try:
            from . import _native  # built by CMake into this folder; knows its build tree
            built = getattr(_native, "ZROLLOUT_BIN", None) or getattr(_native, "zrollout_bin", None)
            if callable(built):
                built = built()
            if built:
                candidates.append(Path(built))
        except ImportError:
            pass
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return str(c)
    on_path = shutil.which("zrollout")
    if on_path:
        return on_path
    raise errors.NotFound("zrollout binary: not in $ZROLLOUT_BIN, " + ", ".join(map(str, candidates)) +
                          " or PATH (build it with scripts/build.sh)")


def serve_args(flags: dict) -> list[str]:
    """``{"max_running": 64, "kv_lazy_pages": True}`` -> ``["--max-running", "64", "--kv-lazy-pages"]``."""
    out: list[str] = []
    for key, value in flags.items():
        if value is None or value is False:
            continue
        opt = "--" + key.replace("_", "-")
        if value is True:
            out.append(opt)
        elif isinstance(value, (list, tuple)):
            for v in value:
                out += [opt, str(v)]
        else:
            if key == "log_level":
                value = _LEVELS.get(str(value).lower(), str(value).lower())
            out += [opt, str(value)]
    return out


def _pdeathsig_setter():
    """A function for the child (between fork and exec) asking the kernel to SIGTERM it when the
    launching thread exits: resolved here, in the parent, so the child runs no import or lookup."""
    try:
        import ctypes
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    term = int(signal.SIGTERM)
    return lambda: prctl(1, term)  # PR_SET_PDEATHSIG


_SET_PDEATHSIG = _pdeathsig_setter()


class Server:
    """A running ``zrollout serve`` process. ``endpoint``, ``process``, ``log_path``, ``client``."""

    def __init__(self, process: subprocess.Popen, endpoint: str, workdir: str, log_path: str, model: str,
                 args: list[str], tp: int = 1):
        self.process = process
        self.tp = tp
        self.endpoint = endpoint
        self.model = model
        self.args = args
        self.log_path = log_path
        self._workdir = workdir
        self._client: Client | None = None
        self._lock = threading.Lock()
        atexit.register(self.stop)

    @property
    def client(self) -> Client:
        """A sync :class:`Client` of this server (made on first use, closed by ``stop``)."""
        with self._lock:
            if self._client is None:
                self._client = Client(self.endpoint)
            return self._client

    def log(self) -> str:
        try:
            return Path(self.log_path).read_text(errors="replace")
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.process.poll() is None

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Polls ``health`` until the server answers ``serving``; raises if it exits or times out."""
        deadline = time.monotonic() + timeout
        with Client(self.endpoint, timeout=1.0) as probe:
            while True:
                if not self.alive():
                    raise errors.Unavailable(f"zrollout serve exited with code {self.process.returncode}:\n"
                                             + _tail(self.log()))
                try:
                    if probe.health(timeout=min(1.0, max(0.05, deadline - time.monotonic())))["status"] == "serving":
                        return
                except errors.Timeout:
                    pass
                if time.monotonic() > deadline:
                    raise errors.Timeout(f"zrollout serve did not answer health within {timeout} s:\n" + _tail(self.log()))
                time.sleep(0.02)

    def stop(self, timeout: float = 30.0) -> int | None:
        """Stops the server: SIGTERM (it drains and exits 0), SIGKILL after ``timeout`` s. A
        tensor-parallel server (under mpirun) is asked with the ``shutdown`` op first, since mpirun
        reports a forwarded signal as a failure. Idempotent; returns the exit code."""
        with self._lock:
            client, self._client = self._client, None
        if self.process.poll() is None and self.tp > 1:
            try:
                with Client(self.endpoint, timeout=5) as c:
                    c.shutdown()
                self.process.wait(timeout)
            except (errors.ZrolloutError, subprocess.TimeoutExpired):
                pass
        if client is not None:
            client.close()
        if self.process.poll() is None:
            try:
                self.process.send_signal(signal.SIGTERM)
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            except ProcessLookupError:
                pass
        shutil.rmtree(self._workdir, ignore_errors=True)
        atexit.unregister(self.stop)
        return self.process.returncode

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    def __repr__(self) -> str:
        return f"Server({self.endpoint!r}, pid={self.process.pid}, model={self.model!r})"


def _tail(text: str, lines: int = 30) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _command(binary: str, model: str, bind: str, tp: int, flags: dict) -> list[str]:
    cmd = [binary, "serve", "--model", str(model), "--bind", bind] + serve_args(flags)
    if tp > 1:
        mpirun = shutil.which("mpirun")
        if mpirun is None:
            raise errors.Unavailable(f"tp={tp}: tensor parallelism needs mpirun (Debian: openmpi-bin)")
        cmd = [mpirun, "-np", str(tp), "--oversubscribe"] + cmd + ["--tp", str(tp)]
    return cmd


def _free_tcp_endpoint() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def launch(model: str, *, transport: str = "ipc", endpoint: str | None = None, tp: int = 1,
           ready_timeout: float = 120.0, binary: str | None = None, env: dict | None = None,
           die_with_parent: bool = True, **serve_flags) -> Server:
    """Starts ``zrollout serve --model MODEL`` and returns the ready :class:`Server`.

    ``endpoint`` binds exactly there; otherwise ``transport`` ("ipc" or "tcp") picks a fresh one.
    ``serve_flags`` are ``zrollout serve`` options (``threads``, ``max_running``,
    ``max_step_tokens``, ``max_prefill_chunk``, ``kv_cache_mb``, ``kv_block_size``,
    ``mmap_weights``, ``kv_lazy_pages``, ``log_level``, ``drain_timeout`` ...).
    """
    if not Path(model).is_dir():
        raise errors.NotFound(f"model: {model} is not a folder")
    if transport not in ("ipc", "tcp"):
        raise errors.invalid("transport", f"expected 'ipc' or 'tcp', got {transport!r}")
    binary = binary or find_binary()
    for attempt in range(_BIND_RETRIES):
        workdir = tempfile.mkdtemp(prefix="zrollout-")
        ep = endpoint or (f"ipc://{workdir}/engine.sock" if transport == "ipc" else _free_tcp_endpoint())
        server = _start(binary, model, ep, tp, serve_flags, env, workdir, die_with_parent)
        try:
            server.wait_ready(ready_timeout)
            return server
        except errors.Unavailable:
            port_taken = endpoint is None and transport == "tcp" and "bind" in server.log()
            server.stop(timeout=5)
            if not port_taken or attempt + 1 == _BIND_RETRIES:
                raise
        except BaseException:
            server.stop(timeout=5)
            raise
    raise AssertionError("unreachable")


def _start(binary: str, model: str, endpoint: str, tp: int, flags: dict, env: dict | None, workdir: str,
           die_with_parent: bool) -> Server:
    cmd = _command(binary, model, endpoint, tp, flags)
    proc_env = dict(os.environ if env is None else env)
    if tp > 1 and os.geteuid() == 0:
        proc_env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
        proc_env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    log_path = os.path.join(workdir, "serve.log")
    main_thread = threading.current_thread() is threading.main_thread()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=proc_env,
                                preexec_fn=_SET_PDEATHSIG if die_with_parent and main_thread else None)
    return Server(proc, endpoint, workdir, log_path, str(model), cmd, tp)


def _tiny_model() -> str:
    """The built-in tiny random model (made once with ``zrollout make-model``), as quickstart does."""
    build_models = _PACKAGE_DIR.parent.parent / "build" / "models"
    base = build_models if build_models.parent.is_dir() else Path(tempfile.gettempdir()) / "zrollout-models"
    out = base / "tiny"
    if not (out / "config.json").is_file():
        subprocess.run([find_binary(), "make-model", "--preset", "tiny", "--out", str(out)], check=True,
                       stdout=subprocess.DEVNULL)
    return str(out)


def launch_local(model: str | None = None, **kwargs) -> Server:
    """:func:`launch` with defaults for tests and notebooks: one process, an ipc endpoint, one
    compute thread, a 64 MiB KV budget faulted in lazily, warnings only. ``model`` defaults to the
    built-in tiny random model. Any keyword overrides a default.
    """
    defaults = {"threads": 1, "kv_cache_mb": 64, "kv_lazy_pages": True, "log_level": "warn"}
    return launch(model or _tiny_model(), **{**defaults, **kwargs})
