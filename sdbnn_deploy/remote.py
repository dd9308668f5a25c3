"""remote: where an artifact runs for profiling: this host, or a board behind TVM's real RPC.

A board (a Raspberry Pi with `pip install apache-tvm`, or the emulated one of sdbnn_deploy.board) runs
`python -m tvm.exec.rpc_server`, either listening on its own port (`--rpc HOST:PORT`, tvm.rpc.connect)
or registered with a TVM RPC tracker under a key (`--tracker HOST:PORT --key rpi4`,
tvm.rpc.connect_tracker(...).request(key)), which hands out one of the boards that serve that key.

Rules:
- Every network step runs under a timeout (`timeout`, seconds): an address that does not answer, or a
  tracker with no free board for the key, is a UserError, never a hang. A key that no board has
  registered is refused at once, naming the keys the tracker knows.
- The device's architecture comes from the device itself (the triple of its LLVM host,
  `target.llvm_get_system_triple`); an artifact for another architecture is refused before upload.
- A device is "emulated" when its root filesystem holds EMULATION_MARKER (the emulated board writes it);
  its times mean nothing and reports say so.
"""
import threading
from dataclasses import dataclass
from pathlib import Path

import tvm
from tvm import rpc

from sdbnn_deploy.errors import UserError
from sdbnn_deploy.run import _check_host, host_arch

DEFAULT_TIMEOUT = 30.0  # seconds for connecting, and for a tracker to hand out a board
SESSION_TIMEOUT = 600  # seconds after which the server ends a session (a stuck client frees the board)
EMULATION_MARKER = "/etc/sdbnn-deploy-emulated-board"
# First field of an LLVM triple -> our architecture names (those of targets/*.toml).
TRIPLE_ARCHES = {"x86_64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}


@dataclass
class Session:
    """Where code runs: `rpc` is None for this host, else an open tvm.rpc session."""

    rpc: object | None
    where: str  # "this host", "rpc 192.168.1.20:9090", "tracker 127.0.0.1:9190 key rpi4"
    arch: str  # "x86_64", "aarch64", or "unknown" when the device does not say
    emulated: bool = False

    @property
    def is_local(self) -> bool:
        return self.rpc is None

    def device(self):
        return tvm.cpu() if self.rpc is None else self.rpc.cpu()

    def global_function(self, name: str):
        return tvm.get_global_func(name) if self.rpc is None else self.rpc.get_function(name)

    def load_module(self, path: Path, remote_name: str | None = None):
        """Load a shared library here, or upload it to the device and load it there."""
        if self.rpc is None:
            return tvm.runtime.load_module(str(path))
        name = remote_name or Path(path).name
        self.rpc.upload(str(path), name)
        return self.rpc.load_module(name)

    def tensor(self, array):
        return tvm.runtime.tensor(array, self.device())

    def set_threads(self, threads: int) -> None:
        """Worker threads of the device's TVM thread pool (takes effect before its first parallel run)."""
        self.global_function("runtime.config_threadpool")(1, int(threads))


def parse_address(text: str, option: str) -> tuple[str, int]:
    """'HOST:PORT' -> (host, port); anything else is a UserError naming the option."""
    host, sep, port = (text or "").rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UserError(f"{option} {text!r}: expected HOST:PORT, e.g. 192.168.1.20:9090")
    return host, int(port)


def _within(seconds: float, what: str, step):
    """step() in a helper thread; a UserError if it has not returned after `seconds`. A step that
    hangs is left behind in its daemon thread (TVM's socket calls cannot be interrupted)."""
    outcome = {}

    def target():
        try:
            outcome["value"] = step()
        except BaseException as e:  # handed to the caller below
            outcome["error"] = e

    thread = threading.Thread(target=target, daemon=True, name=f"sdbnn-rpc: {what}")
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise UserError(f"{what}: no answer within {seconds:g} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def connect(rpc_address: str | None = None, tracker: str | None = None, key: str | None = None,
            timeout: float = DEFAULT_TIMEOUT, session_timeout: float = SESSION_TIMEOUT) -> Session:
    """This host (no address), a server at `rpc_address`, or a board for `key` from `tracker`; the server
    ends the session after `session_timeout` seconds."""
    if rpc_address and tracker:
        raise UserError("give either --rpc HOST:PORT or --tracker HOST:PORT --key KEY, not both")
    if tracker and not key:
        raise UserError("--tracker needs --key (the key the board registered, e.g. rpi4)")
    if key and not tracker:
        raise UserError("--key needs --tracker HOST:PORT")
    if rpc_address:
        host, port = parse_address(rpc_address, "--rpc")
        where = f"rpc {host}:{port}"
        session = _within(timeout, f"--rpc {rpc_address}",
                          lambda: _rpc_connect(host, port, where, session_timeout))
    elif tracker:
        where = f"tracker {tracker} key {key}"
        session = _request(tracker, key, timeout, where, session_timeout)
    else:
        return Session(None, "this host", host_arch())
    return _describe(session, where, timeout)


def _rpc_connect(host: str, port: int, where: str, session_timeout: float):
    try:
        return rpc.connect(host, port, "", session_timeout=session_timeout)
    except Exception as e:  # TVM raises InternalError / RuntimeError with the socket's reason
        raise UserError(f"{where}: cannot connect to a TVM RPC server ({_first_line(e)}); is "
                        f"`python -m tvm.exec.rpc_server` running there?") from None


def _request(tracker: str, key: str, timeout: float, where: str, session_timeout: float):
    """A session with a board that serves `key`, handed out by the tracker."""
    host, port = parse_address(tracker, "--tracker")

    def open_tracker():
        try:
            return rpc.connect_tracker(host, port)
        except Exception as e:
            raise UserError(f"--tracker {tracker}: cannot reach a TVM RPC tracker ({_first_line(e)})") from None

    session = _within(timeout, f"--tracker {tracker}", open_tracker)
    try:
        served = served_keys(_within(timeout, f"--tracker {tracker}", session.summary))
        if key not in served:
            raise UserError(f"--key {key}: no board serves this key at tracker {tracker} "
                            f"(keys served there: {', '.join(sorted(served)) or 'none'})")

        def request():
            try:
                return session.request(key, session_timeout=session_timeout, max_retry=1)
            except RuntimeError as e:
                raise UserError(f"{where}: the tracker handed out a board that did not answer "
                                f"({_first_line(e)})") from None

        return _within(timeout, f"--tracker {tracker} --key {key} (every board busy?)", request)
    finally:
        session.close()


def served_keys(summary: dict) -> set[str]:
    """The keys of the servers registered with a tracker (its summary() lists them as "server:KEY")."""
    keys = (info.get("key", "") for info in summary.get("server_info", []))
    return {k.split(":", 1)[1] for k in keys if k.startswith("server:")}


def _describe(rpc_session, where: str, timeout: float) -> Session:
    """The session with the device's architecture and emulation flag, asked of the device."""
    def ask():
        try:
            triple = str(rpc_session.get_function("target.llvm_get_system_triple")())
        except Exception:
            triple = "unknown"
        try:
            rpc_session.download(EMULATION_MARKER)
            emulated = True
        except Exception:
            emulated = False
        return triple, emulated

    triple, emulated = _within(timeout, where, ask)
    arch = TRIPLE_ARCHES.get(triple.split("-")[0], "unknown")
    return Session(rpc_session, where, arch, emulated)


def check_artifact(manifest: dict, artifact_dir, session: Session) -> None:
    """Refuse an artifact the device cannot run: another architecture (remote), or what run refuses here."""
    if session.is_local:
        if manifest["arch"] != session.arch:
            raise UserError(f"{artifact_dir}: built for {manifest['arch']}, this host is {session.arch}: profile "
                            f"it on a board (--rpc or --tracker/--key), e.g. `sdbnn-deploy board emulate`")
        _check_host(manifest, artifact_dir)
        return
    if session.arch != "unknown" and manifest["arch"] != session.arch:
        raise UserError(f"{artifact_dir}: built for {manifest['arch']} (target {manifest['target']['name']}), "
                        f"but the device at {session.where} is {session.arch}; compile it for that device")


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__
