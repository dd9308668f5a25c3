"""Run aarch64 artifacts on an x86 host: the aarch64 TVM runtime, a small C driver, and qemu-aarch64.

- The runtime: libtvm_runtime.so and libtvm_ffi.so (plus the FFI's C headers) taken from the aarch64
  wheels of the installed apache-tvm and apache-tvm-ffi versions, the same files that `pip install
  apache-tvm` puts on a 64-bit Raspberry Pi OS. Fetched once by `ensure_runtime()` (the Makefile's set-up
  runs `python -m sdbnn_deploy.aarch64 fetch`) into $SDBNN_DEPLOY_CACHE/aarch64/ (default
  ~/.cache/sdbnn-deploy/aarch64/), one folder per version pair.
- The driver: sdbnn_deploy/aarch64_driver.c, which loads the library of `export_library` through the TVM
  FFI C ABI and runs its Relax VM "main" (the steps of tvm.relax.VirtualMachine). Cross-compiled with
  aarch64-linux-gnu-gcc on first use and cached next to the runtime, keyed by the source's hash.
- The run: `qemu-aarch64 -L /usr/aarch64-linux-gnu DRIVER LIB OUT_DIR INPUTS...` on x86 (natively on an
  aarch64 host). Results are exact; timings under emulation mean nothing.
"""
import hashlib
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from sdbnn_deploy.errors import UserError

SYSROOT = Path("/usr/aarch64-linux-gnu")  # Debian's aarch64 libc and libstdc++ for the cross toolchain
DRIVER_SOURCE = Path(__file__).with_name("aarch64_driver.c")
WHEEL_PLATFORM = "manylinux_2_28_aarch64"
# What the runtime folder holds, by wheel: member path in the wheel -> path in the folder.
RUNTIME_FILES = {
    "apache-tvm": {"tvm/lib/libtvm_runtime.so": "lib/libtvm_runtime.so"},
    "apache-tvm-ffi": {"tvm_ffi/lib/libtvm_ffi.so": "lib/libtvm_ffi.so", "tvm_ffi/include/": "include/"},
}
# Machine field of an ELF header (offset 18, little-endian) -> architecture name.
ELF_MACHINES = {0x3E: "x86_64", 0xB7: "aarch64"}


def is_aarch64_host() -> bool:
    return platform.machine() in ("aarch64", "arm64")


def cache_root() -> Path:
    return Path(os.environ.get("SDBNN_DEPLOY_CACHE", "~/.cache/sdbnn-deploy")).expanduser() / "aarch64"


def runtime_versions() -> dict[str, str]:
    """The installed apache-tvm and apache-tvm-ffi versions: the aarch64 runtime must match them."""
    return {dist: importlib.metadata.version(dist) for dist in RUNTIME_FILES}


def runtime_dir() -> Path:
    v = runtime_versions()
    return cache_root() / f"tvm-{v['apache-tvm']}-ffi-{v['apache-tvm-ffi']}"


def ensure_runtime() -> Path:
    """The folder with lib/libtvm_runtime.so, lib/libtvm_ffi.so and include/ for aarch64; downloads the
    aarch64 wheels with pip the first time (about 100 MB), keeps only those files."""
    target = runtime_dir()
    if (target / "lib" / "libtvm_runtime.so").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        wheels, staging = Path(tmp) / "wheels", Path(tmp) / "runtime"
        _download_wheels(wheels)
        for dist, members in RUNTIME_FILES.items():
            (wheel,) = wheels.glob(dist.replace("-", "_") + "-*.whl")
            _extract(wheel, members, staging)
        try:
            staging.rename(target)  # atomic: a folder is there complete or not at all
        except OSError:
            if not (target / "lib" / "libtvm_runtime.so").is_file():
                raise
    return target


def _download_wheels(dest: Path) -> None:
    pins = [f"{dist}=={version}" for dist, version in runtime_versions().items()]
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
           "--platform", WHEEL_PLATFORM, "--python-version", "311", "--dest", str(dest), *pins]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["(no output)"]
        raise UserError(f"could not download the aarch64 TVM runtime ({' '.join(pins)}): {tail[0]}")


def _extract(wheel: Path, members: dict[str, str], dest: Path) -> None:
    """Copies the wheel's members (a file, or a folder when the name ends with /) into dest."""
    with zipfile.ZipFile(wheel) as z:
        for info in z.infolist():
            if info.is_dir():
                continue
            for src, dst in members.items():
                if info.filename == src or (src.endswith("/") and info.filename.startswith(src)):
                    out = dest / (dst + info.filename[len(src):] if src.endswith("/") else dst)
                    out.parent.mkdir(parents=True, exist_ok=True)
                    with z.open(info) as fin, open(out, "wb") as fout:
                        shutil.copyfileobj(fin, fout)


def _require_tool(names: list[str], package: str) -> str:
    """The first of the executables found on PATH; else a UserError naming the Debian package."""
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    raise UserError(f"{names[0]} not found: install the Debian package {package} "
                    f"(sudo apt-get install {package}, or run `make setup` as root)")


def cross_compiler() -> str:
    """The C compiler for aarch64: aarch64-linux-gnu-gcc on x86 (with its libc), the host's gcc on aarch64."""
    if is_aarch64_host():
        return _require_tool(["gcc", "cc"], "gcc")
    gcc = _require_tool(["aarch64-linux-gnu-gcc"], "gcc-aarch64-linux-gnu")
    if not (SYSROOT / "lib" / "libc.so").exists():
        raise UserError(f"the aarch64 C library is missing from {SYSROOT}: "
                        "install the Debian package libc6-dev-arm64-cross")
    return gcc


def emulator() -> list[str]:
    """The command prefix that runs an aarch64 Linux program here: nothing on aarch64, qemu on x86."""
    if is_aarch64_host():
        return []
    qemu = _require_tool(["qemu-aarch64", "qemu-aarch64-static"], "qemu-user")
    if not (SYSROOT / "lib" / "libstdc++.so.6").exists():
        raise UserError(f"the aarch64 C++ library is missing from {SYSROOT}: "
                        "install the Debian package libstdc++6-arm64-cross")
    return [qemu, "-L", str(SYSROOT)]


def ensure_driver() -> Path:
    """The aarch64 build of aarch64_driver.c, linked against the cached runtime; built once per source."""
    runtime = ensure_runtime()
    digest = hashlib.sha256(DRIVER_SOURCE.read_bytes()).hexdigest()[:12]
    driver = runtime / f"driver-{digest}"
    if driver.is_file():
        return driver
    lib = runtime / "lib"
    tmp = driver.with_name(driver.name + f".{os.getpid()}.tmp")
    cmd = [cross_compiler(), "-O2", "-std=c11", "-Wall", "-o", str(tmp), str(DRIVER_SOURCE),
           f"-I{runtime / 'include'}", f"-L{lib}", "-Wl,--no-as-needed", "-ltvm_ffi", "-ltvm_runtime",
           "-Wl,--disable-new-dtags", f"-Wl,-rpath,{lib}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"building the aarch64 driver failed:\n{proc.stderr}")
    os.replace(tmp, driver)
    return driver


def elf_arch(path: Path) -> str:
    """The architecture a shared library was built for ("x86_64", "aarch64"), from its ELF header."""
    header = Path(path).read_bytes()[:20]
    if header[:4] != b"\x7fELF":
        raise UserError(f"{path}: not a compiled library (no ELF header)")
    machine = int.from_bytes(header[18:20], "little")
    return ELF_MACHINES.get(machine, f"ELF machine {machine:#x}")


def run_library(library: Path, inputs: list[np.ndarray], threads: int | None = None) -> list[np.ndarray]:
    """Runs "main" of an aarch64 Relax VM library (from export_library) on the inputs, in order, under
    qemu; returns its outputs, a tuple flattened in order."""
    library = Path(library).resolve()
    arch = elf_arch(library)
    if arch != "aarch64":
        raise UserError(f"{library} is built for {arch}, not aarch64: run it on its own host")
    command = emulator()  # checks the tools before the (slow, first time) runtime download
    driver = ensure_driver()
    env = dict(os.environ)
    if threads:
        env["TVM_NUM_THREADS"] = str(threads)
    with tempfile.TemporaryDirectory(prefix="sdbnn-qemu-") as tmp:
        args = []
        for i, array in enumerate(inputs):
            array = np.ascontiguousarray(array)
            path = Path(tmp) / f"in{i}.bin"
            array.tofile(path)
            args += [str(path), str(array.dtype), ",".join(map(str, array.shape)) or "-"]
        proc = subprocess.run([*command, str(driver), str(library), tmp, *args],
                              capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise RuntimeError(f"running {library.name} under emulation failed:\n{proc.stderr.strip()}")
        count = int(proc.stdout.split()[0])
        return [np.load(Path(tmp) / f"out{i}.npy") for i in range(count)]


def run_under_qemu(artifact_dir, inputs: dict[str, np.ndarray], threads: int | None = None) -> list[np.ndarray]:
    """Runs an aarch64 artifact (a folder, or the .so itself) on named inputs. A manifest.json in the
    folder gives the library ("library") and the input order ("inputs", each with a "name");
    without one, the folder's one .so and the dict's order."""
    artifact = Path(artifact_dir)
    if artifact.is_file():
        return run_library(artifact, list(inputs.values()), threads)
    manifest_path = artifact / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    library = artifact / manifest["library"] if "library" in manifest else _find_library(artifact)
    names = [i["name"] for i in manifest.get("inputs", [])] or list(inputs)
    missing = [n for n in names if n not in inputs]
    if missing:
        raise UserError(f"{artifact}: no value for input(s) {', '.join(missing)}")
    return run_library(library, [inputs[n] for n in names], threads)


def _find_library(artifact: Path) -> Path:
    libraries = sorted(artifact.glob("*.so"))
    if len(libraries) != 1:
        raise UserError(f"{artifact}: expected one compiled library (*.so), found {len(libraries)}")
    return libraries[0]


def main(argv: list[str]) -> int:
    """`python -m sdbnn_deploy.aarch64 fetch`: fetch the aarch64 runtime, and build the driver where the
    cross compiler is installed."""
    if argv != ["fetch"]:
        print("usage: python -m sdbnn_deploy.aarch64 fetch", file=sys.stderr)
        return 2
    try:
        print(f"aarch64 TVM runtime: {ensure_runtime()}")
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    try:
        print(f"aarch64 driver: {ensure_driver()}")
    except UserError as e:
        print(f"aarch64 driver not built: {e}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
