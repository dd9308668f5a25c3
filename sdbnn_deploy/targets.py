"""Target descriptions: what differs between an AVX-512 server, a Raspberry Pi 3, 4 and 5 is a data file.

Each `targets/NAME.toml` at the top of the repository is one of:
- a description: `description`, `arch` ("x86_64" | "aarch64"), `schedule` ("x86" | "arm"), optional
  `cross_compiler` (the C compiler that links the library for another architecture), `threads` (default
  thread count on the device; 0 means all cores of the machine that compiles), optional `rpc_key`
  (the key a board registers with the RPC tracker), a `[llvm]` table (mtriple, mcpu, mattr: the LLVM
  target) and a `[params]` table (schedule parameters, read by sdbnn_deploy.tvm.schedule_<schedule>);
- an alias: `alias = "OTHER"` (arm -> rpi4);
- a host detection: `detect = "host"` (x86 -> the best x86 description this host's CPU runs).

Tuned shapes of the user (`compile --tune` where the shipped targets/ cannot be written, as in an
installed package) live in user_targets_dir()/NAME.toml: a file of `[params.shapes."KEY"]` tables only,
merged over the shipped description's shapes (user_shapes_path; $SDBNN_DEPLOY_TARGETS, else
$XDG_CONFIG_HOME/sdbnn-deploy/targets or ~/.config/sdbnn-deploy/targets). Everything else, and every
shape the user has not tuned, comes from the shipped file, also after an upgrade.
"""
import importlib.resources
import os
import platform
import sys
from dataclasses import dataclass, field
from pathlib import Path

from sdbnn_deploy.errors import UserError

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib


def _targets_dir() -> Path:
    """targets/ at the top of the repository (editable install), else the copy a wheel ships as package
    data (sdbnn_deploy.target_files, see pyproject.toml)."""
    repo = Path(__file__).resolve().parent.parent / "targets"
    return repo if repo.is_dir() else Path(str(importlib.resources.files("sdbnn_deploy.target_files")))


TARGETS_DIR = _targets_dir()


@dataclass(frozen=True)
class TargetSpec:
    name: str
    description: str
    tvm_target: dict  # for tvm.target.Target(...): {"kind": "llvm", "mtriple": ..., "mcpu": ..., "mattr": [...]}
    arch: str  # "x86_64" | "aarch64"
    cross_compiler: str | None  # e.g. "aarch64-linux-gnu-gcc"; None: the host's compiler
    threads: int
    rpc_key: str | None
    schedule: str  # "x86" | "arm"
    params: dict = field(default_factory=dict)

    @property
    def triple(self) -> str:
        """The LLVM triple; an x86 description without one means the host's x86_64 Linux."""
        return self.tvm_target.get("mtriple", "x86_64-linux-gnu")

    @property
    def features(self) -> list[str]:
        return list(self.tvm_target.get("mattr", []))


USER_TARGETS_ENV = "SDBNN_DEPLOY_TARGETS"


def user_targets_dir() -> Path:
    """The user's folder of tuned shapes (module docstring), absolute; it need not exist."""
    if os.environ.get(USER_TARGETS_ENV):
        return Path(os.environ[USER_TARGETS_ENV]).resolve()
    config = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return (Path(config) / "sdbnn-deploy" / "targets").resolve()


def target_path(name: str) -> Path:
    """The shipped description of NAME (it may not exist)."""
    return TARGETS_DIR / f"{name}.toml"


def user_shapes_path(name: str) -> Path:
    """The user's tuned shapes of NAME (it may not exist)."""
    return user_targets_dir() / f"{name}.toml"


def _load(path: Path) -> dict:
    with open(path, "rb") as f:
        try:
            return tomllib.load(f)
        except tomllib.TOMLDecodeError as e:
            raise UserError(f"{path}: {e}") from None


def _user_shapes(name: str) -> dict:
    """{shape key: params} of the user's tuned shapes of NAME; a file with anything else is an error."""
    path = user_shapes_path(name)
    if not path.is_file():
        return {}
    data = _load(path)
    if set(data) - {"params"} or set(data.get("params", {})) - {"shapes"}:
        raise UserError(f"{path}: a user file of tuned shapes holds only [params.shapes.\"KEY\"] tables")
    return data.get("params", {}).get("shapes", {})


def _read(name: str) -> dict:
    path = target_path(name)
    if not path.is_file():
        raise UserError(f"unknown target {name!r}; valid targets: {', '.join(target_names())}")
    return _load(path)


def target_names() -> list[str]:
    """Every name that get_target accepts, descriptions and aliases, sorted."""
    return sorted(p.stem for p in TARGETS_DIR.glob("*.toml"))


def get_target(name: str) -> TargetSpec:
    """The description NAME, with aliases and host detection resolved (get_target("arm").name == "rpi4")."""
    data = _read(name)
    if "alias" in data:
        return get_target(data["alias"])
    if data.get("detect") == "host":
        return get_target(host_target_name())
    return _spec(name, data)


def _spec(name: str, data: dict) -> TargetSpec:
    path = target_path(name)
    try:
        arch, schedule, llvm = data["arch"], data["schedule"], data["llvm"]
    except KeyError as e:
        raise UserError(f"{path}: missing key {e.args[0]!r}") from None
    if arch not in ("x86_64", "aarch64") or schedule not in ("x86", "arm"):
        raise UserError(f"{path}: arch must be x86_64 or aarch64 and schedule x86 or arm")
    threads = int(data.get("threads", 0)) or os.cpu_count() or 1
    return TargetSpec(
        name=name,
        description=data.get("description", name),
        tvm_target={"kind": "llvm", **llvm},
        arch=arch,
        cross_compiler=data.get("cross_compiler"),
        threads=threads,
        rpc_key=data.get("rpc_key"),
        schedule=schedule,
        params=_with_user_shapes(dict(data.get("params", {})), name),
    )


def _with_user_shapes(params: dict, name: str) -> dict:
    user = _user_shapes(name)
    return {**params, "shapes": {**params.get("shapes", {}), **user}} if user else params


def aliases() -> dict[str, str]:
    """Names that stand for another description: {"arm": "rpi4", "x86": <this host's best x86>}."""
    out = {}
    for name in target_names():
        data = _read(name)
        if "alias" in data or "detect" in data:
            out[name] = get_target(name).name
    return out


def list_targets() -> list[TargetSpec]:
    """Every concrete description (aliases left out), sorted by name."""
    indirect = aliases()
    return [get_target(n) for n in target_names() if n not in indirect]


def host_target_name(cpuinfo_path: str = "/proc/cpuinfo", machine: str | None = None) -> str:
    """The best description for this host: x86-avx512 (avx512f + avx512_vpopcntdq), x86-avx2 (avx2 +
    popcnt), x86-generic, or aarch64 on a 64-bit ARM host."""
    machine = machine or platform.machine()
    if machine in ("aarch64", "arm64"):
        return "aarch64"
    if machine not in ("x86_64", "AMD64"):
        raise UserError(f"no target description for a {machine} host; name one of: {', '.join(target_names())}")
    flags = _cpu_flags(cpuinfo_path)
    if {"avx512f", "avx512_vpopcntdq"} <= flags:
        return "x86-avx512"
    if {"avx2", "popcnt"} <= flags:
        return "x86-avx2"
    return "x86-generic"


def _cpu_flags(cpuinfo_path: str) -> set[str]:
    """The CPU feature flags of the first processor in /proc/cpuinfo (empty if unreadable)."""
    try:
        with open(cpuinfo_path) as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()
