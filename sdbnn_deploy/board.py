"""board: an emulated Raspberry Pi, and the TVM RPC processes around it, for tests and for users without
a board.

The emulated board is the real aarch64 TVM RPC server (`python -m tvm.exec.rpc_server` of the aarch64
apache-tvm wheel, the one a Pi runs) under qemu-user on 127.0.0.1. Its times mean nothing; the path, the
runtime and the results are real. It needs:

- a root filesystem, built once and cached in $SDBNN_DEPLOY_CACHE/board/ (default
  ~/.cache/sdbnn-deploy/board/), one folder per TVM version (`ensure_rootfs`, about 80 s on 2 cores
  plus downloads, about 700 MB): Debian bookworm arm64 from `debootstrap --foreign --variant=minbase`
  with every downloaded .deb unpacked by `dpkg-deb -x` (no second stage: no binfmt_misc needed), and
  the aarch64 wheels installed into ROOTFS/opt/tvm/site-packages by this host's pip;
- a wrapper script (ROOTFS/opt/sdbnn/python, a host shell script) that runs the board's python under
  qemu-aarch64-static; sitecustomize.py makes sys.executable that wrapper, because the server starts its
  workers with `sys.executable -m tvm.exec.popen_worker` (an aarch64 ELF there: "Exec format error").

Processes (each a context manager that starts it, waits until it serves, and stops its whole process
group on exit, also when the start times out):
- EmulatedBoard(port=None, tracker=None, key="rpi4"): the board; with a tracker it registers under key;
- LocalServer(port=None, tracker=None, key=""): this host's own (x86) `tvm.exec.rpc_server`;
- LocalTracker(port=None): `python -m tvm.exec.rpc_tracker` (needs tornado).
Every one binds 127.0.0.1 only; a port of None picks a free one.
"""
import contextlib
import fcntl
import importlib.metadata
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sdbnn_deploy.aarch64 import WHEEL_PLATFORM, _require_tool, is_aarch64_host, runtime_versions
from sdbnn_deploy.errors import UserError
from sdbnn_deploy.remote import EMULATION_MARKER, connect, served_keys

SUITE = "bookworm"
DEBIAN_MIRROR = os.environ.get("SDBNN_DEPLOY_DEBIAN_MIRROR", "http://deb.debian.org/debian")
# Debian packages of the board beyond minbase (python3 pulls in libstdc++, which TVM needs).
DEBIAN_PACKAGES = ["python3"]
# Python packages of the board; the server needs cloudpickle and psutil although the wheel does not say so.
BOARD_PYTHON_PACKAGES = ["numpy", "ml_dtypes", "typing_extensions", "cloudpickle", "psutil"]
BOARD_PYTHON = "usr/bin/python3.11"
SITE_PACKAGES = "opt/tvm/site-packages"
WRAPPER = "opt/sdbnn/python"
COMPLETE = "opt/sdbnn/complete"  # written last: a rootfs without it is not used
START_TIMEOUT = 180.0  # seconds for a board to serve (import tvm alone takes about 6 s under qemu)


def board_cache() -> Path:
    return Path(os.environ.get("SDBNN_DEPLOY_CACHE", "~/.cache/sdbnn-deploy")).expanduser() / "board"


def default_rootfs() -> Path:
    v = runtime_versions()
    return board_cache() / f"{SUITE}-arm64-tvm-{v['apache-tvm']}-ffi-{v['apache-tvm-ffi']}"


def qemu() -> str:
    if is_aarch64_host():
        raise UserError("this host is aarch64: run `python -m tvm.exec.rpc_server` itself instead of an "
                        "emulated board")
    return _require_tool(["qemu-aarch64-static"], "qemu-user-static")


def ensure_rootfs(rootfs=None, progress=print) -> Path:
    """The board's root filesystem, built the first time (see the module docstring); concurrent callers
    wait for one build."""
    rootfs = Path(rootfs) if rootfs else default_rootfs()
    if (rootfs / COMPLETE).is_file():
        return rootfs
    rootfs.parent.mkdir(parents=True, exist_ok=True)
    with open(rootfs.parent / f".{rootfs.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (rootfs / COMPLETE).is_file():
            _build_rootfs(rootfs, progress)
    return rootfs


def _build_rootfs(rootfs: Path, progress) -> None:
    debootstrap = _require_tool(["debootstrap", "/usr/sbin/debootstrap"], "debootstrap")
    _require_tool(["dpkg-deb"], "dpkg")
    qemu()
    if os.geteuid() != 0:
        raise UserError("building the emulated board's root filesystem runs debootstrap, which needs root: "
                        "run it once as root (e.g. `sudo sdbnn-deploy board emulate --build-only`)")
    if rootfs.exists() and any(rootfs.iterdir()):
        raise UserError(f"--rootfs {rootfs}: exists, is not empty and is not a finished board root filesystem")
    staging = Path(tempfile.mkdtemp(prefix=f".{rootfs.name}.build-", dir=rootfs.parent))
    try:
        progress(f"board: debootstrap {SUITE} arm64 into {staging} (once; downloads about 40 MB)")
        _run([debootstrap, "--arch=arm64", "--foreign", "--variant=minbase",
              f"--include={','.join(DEBIAN_PACKAGES)}", SUITE, str(staging), DEBIAN_MIRROR], "debootstrap")
        progress("board: unpacking the downloaded packages (dpkg-deb -x)")
        for deb in sorted((staging / "var/cache/apt/archives").glob("*.deb")):
            _run(["dpkg-deb", "-x", str(deb), str(staging)], f"dpkg-deb -x {deb.name}")
        progress("board: installing the aarch64 apache-tvm wheel and its dependencies (host pip)")
        _install_wheels(staging / SITE_PACKAGES)
        _write_board_files(staging)
        if rootfs.exists():
            rootfs.rmdir()
        staging.rename(rootfs)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    progress(f"board: root filesystem ready in {rootfs}")


def _install_wheels(target: Path) -> None:
    pins = [f"{dist}=={version}" for dist, version in runtime_versions().items()]
    _run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
          "--only-binary=:all:", "--platform", WHEEL_PLATFORM, "--python-version", "311",
          "--implementation", "cp", "--abi", "cp311", "--target", str(target), *pins, *BOARD_PYTHON_PACKAGES],
         "pip install of the aarch64 wheels")


def _write_board_files(rootfs: Path) -> None:
    (rootfs / SITE_PACKAGES / "sitecustomize.py").write_text(
        '"""sdbnn-deploy emulated board: the server starts workers with sys.executable, which must be the\n'
        'host wrapper that runs this python under qemu (SDBNN_BOARD_EXECUTABLE), not the aarch64 ELF."""\n'
        "import os\nimport sys\n\n"
        "sys.executable = os.environ.get('SDBNN_BOARD_EXECUTABLE', sys.executable)\n")
    marker = rootfs / EMULATION_MARKER.lstrip("/")
    marker.write_text("emulated Raspberry Pi (qemu-user): times mean nothing\n")
    (rootfs / COMPLETE).parent.mkdir(parents=True, exist_ok=True)
    (rootfs / COMPLETE).write_text(f"{SUITE} arm64, {runtime_versions()}\n")


def _run(cmd: list[str], what: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-3:]
        raise UserError(f"building the emulated board: {what} failed: {' / '.join(tail) or proc.returncode}")


def write_wrapper(rootfs: Path) -> Path:
    """ROOTFS/opt/sdbnn/python: runs the board's python under qemu with the board's packages."""
    wrapper = rootfs / WRAPPER
    wrapper.parent.mkdir(parents=True, exist_ok=True)
    text = ("#!/bin/sh\n# The emulated board's python (written by sdbnn_deploy.board).\n"
            f"export PYTHONPATH='{rootfs / SITE_PACKAGES}'\n"
            f"export SDBNN_BOARD_EXECUTABLE='{wrapper}'\n"
            "export PYTHONDONTWRITEBYTECODE=1\n"
            f"exec '{qemu()}' -L '{rootfs}' '{rootfs / BOARD_PYTHON}' \"$@\"\n")
    if not wrapper.is_file() or wrapper.read_text() != text:
        tmp = wrapper.with_name(f".python.{os.getpid()}")
        tmp.write_text(text)
        tmp.chmod(0o755)
        os.replace(tmp, wrapper)
    return wrapper


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Process:
    """A child process in its own process group, logging to a file; stopped with its whole group."""

    what = "process"

    def __init__(self, port: int | None = None):
        self.port = port or free_port()
        self.proc = None
        self._log_dir = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        raise NotImplementedError

    def ready(self) -> bool:
        return "bind to" in self.log()

    def log(self) -> str:
        path = Path(self._log_dir.name) / "log" if self._log_dir else None
        return path.read_text(errors="replace") if path and path.is_file() else ""

    def start(self, timeout: float = START_TIMEOUT):
        self._log_dir = tempfile.TemporaryDirectory(prefix="sdbnn-board-")
        with open(Path(self._log_dir.name) / "log", "w") as log:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        try:
            while not self.ready():
                if self.proc.poll() is not None:
                    raise UserError(f"{self.what} exited with status {self.proc.returncode}: {self._tail()}")
                if time.monotonic() > deadline:
                    raise UserError(f"{self.what} did not serve on {self.address} within {timeout:g} s: "
                                    f"{self._tail()}")
                time.sleep(0.5)
        except BaseException:
            self.stop()
            raise
        return self

    def _tail(self) -> str:
        lines = [line for line in self.log().splitlines() if line.strip()]
        return " / ".join(lines[-3:]) or "(no output)"

    def stop(self) -> None:
        """SIGTERM to the process group we started, SIGKILL if it is still there after 10 s."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)  # workers left behind by the server
        if self._log_dir is not None:
            self._log_dir.cleanup()
            self._log_dir = None

    def __enter__(self):
        return self if self.proc is not None else self.start()

    def __exit__(self, *exc):
        self.stop()


class LocalTracker(_Process):
    """`python -m tvm.exec.rpc_tracker` on 127.0.0.1."""

    what = "TVM RPC tracker"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--port", str(self.port),
                "--port-end", str(self.port + 1)]


class _Server(_Process):
    """A `tvm.exec.rpc_server` on 127.0.0.1, optionally registered with `tracker` under `key`."""

    def __init__(self, port: int | None = None, tracker: str | None = None, key: str = ""):
        super().__init__(port)
        self.tracker, self.key = tracker, key
        if tracker and not key:
            raise UserError("--tracker needs --key (the key clients ask the tracker for)")

    def python(self) -> list[str]:
        raise NotImplementedError

    def command(self) -> list[str]:
        cmd = [*self.python(), "-m", "tvm.exec.rpc_server", "--host", "127.0.0.1", "--port", str(self.port),
               "--port-end", str(self.port + 1)]
        return cmd + (["--tracker", self.tracker, "--key", self.key] if self.tracker else [])

    def ready(self) -> bool:
        """Direct: a real session answers. With a tracker: the tracker lists our key."""
        if not super().ready():
            return False
        try:
            if self.tracker:
                from tvm import rpc

                host, port = self.tracker.rsplit(":", 1)
                tracker = rpc.connect_tracker(host, int(port))
                try:
                    return self.key in served_keys(tracker.summary())
                finally:
                    tracker.close()
            connect(rpc_address=self.address, timeout=60)
            return True
        except (UserError, OSError, RuntimeError):  # not up yet
            return False


class LocalServer(_Server):
    """This host's TVM RPC server (the python that runs us)."""

    what = "TVM RPC server"

    def python(self) -> list[str]:
        return [sys.executable]


class EmulatedBoard(_Server):
    """The aarch64 TVM RPC server under qemu-user (see the module docstring); key defaults to rpi4."""

    what = "emulated board"

    def __init__(self, port: int | None = None, tracker: str | None = None, key: str = "rpi4", rootfs=None,
                 progress=print):
        super().__init__(port, tracker, key if tracker else "")
        self.rootfs = ensure_rootfs(rootfs, progress)

    def python(self) -> list[str]:
        return [str(write_wrapper(self.rootfs))]


def emulate(port: int | None = None, tracker: str | None = None, key: str = "rpi4", rootfs=None,
            build_only: bool = False, progress=print) -> None:
    """`sdbnn-deploy board emulate`: build the board if needed, then serve until Ctrl-C."""
    rootfs = ensure_rootfs(rootfs, progress)
    if build_only:
        return
    version = importlib.metadata.version("apache-tvm")
    progress(f"board: starting the aarch64 TVM {version} RPC server under qemu (about 15 s)")
    with EmulatedBoard(port, tracker, key, rootfs, progress) as board:
        where = f"registered with tracker {tracker} as key {key!r}" if tracker else "serving"
        progress(f"board: emulated Raspberry Pi {where} on {board.address} (times mean nothing); "
                 f"Ctrl-C stops it")
        progress("  sdbnn-deploy profile ARTIFACT " +
                 (f"--tracker {tracker} --key {key}" if tracker else f"--rpc {board.address}"))
        try:
            while board.proc.poll() is None:
                time.sleep(1)
        except KeyboardInterrupt:
            progress("board: stopping")
            return
        raise UserError(f"the emulated board exited with status {board.proc.returncode}: {board._tail()}")
