"""Instructions per 128 bit-MACs in the hot loops of a built aarch64 library, read from its disassembly.

The rule: disassemble the library (aarch64-linux-gnu-objdump -d, or objdump on an aarch64 host); every
backward branch (a branch to a lower address in the same function) closes a loop [target, branch]. A hot
loop is an innermost loop, among those that contain a `cnt vN.16b` (the NEON byte popcount), that
contains no other such loop. Its figure is

    instructions per 128 bit-MACs = instructions from the loop's first to its last (the branch included)
                                    / number of `cnt .16b` in it

since one `cnt .16b` counts the set bits of 16 bytes = 128 XORed bit pairs. Bit-MACs on the zero words a
kernel pads with (sdbnn_deploy.tvm.kernels_arm pads the word count to whole 16-byte quads) are counted
as bit-MACs: the figure describes the instruction stream, not how many channels a layer has.

`python -m sdbnn_deploy.asm_count ARTIFACT_DIR_OR_LIBRARY` prints one row per hot loop.
"""
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from sdbnn_deploy.errors import UserError

BITS_PER_CNT = 128  # cnt vN.16b: 16 bytes
_FUNCTION = re.compile(r"^([0-9a-f]+) <(.+)>:$")
_INSTRUCTION = re.compile(r"^\s*([0-9a-f]+):\s+(?:[0-9a-f]{8}\s+)?([a-z][a-z0-9.]*)\s*(.*)$")
_BRANCH = re.compile(r"^(b|b\.\w+|cbn?z|tbn?z)$")
_BYTE_CNT = re.compile(r"\bv\d+\.16b,\s*v\d+\.16b")


@dataclass(frozen=True)
class Instruction:
    address: int
    mnemonic: str
    operands: str

    @property
    def is_byte_cnt(self) -> bool:
        return self.mnemonic == "cnt" and bool(_BYTE_CNT.search(self.operands))

    def branch_target(self) -> int | None:
        """The address a direct branch goes to, else None."""
        if not _BRANCH.match(self.mnemonic):
            return None
        match = re.search(r"\b([0-9a-f]+) <", self.operands)
        return int(match.group(1), 16) if match else None


@dataclass(frozen=True)
class HotLoop:
    function: str
    start: int
    end: int  # address of the closing branch
    instructions: int
    byte_cnts: int
    mnemonics: dict  # mnemonic -> count, for the report

    @property
    def per_128_bit_macs(self) -> float:
        return self.instructions / self.byte_cnts


def objdump() -> str:
    for name in ("aarch64-linux-gnu-objdump", "objdump"):
        path = shutil.which(name)
        if path and (name != "objdump" or _objdump_reads_aarch64(path)):
            return path
    raise UserError("aarch64-linux-gnu-objdump not found: install the Debian package binutils-aarch64-linux-gnu "
                    "(sudo apt-get install binutils-aarch64-linux-gnu, or run `make setup` as root)")


def _objdump_reads_aarch64(path: str) -> bool:
    proc = subprocess.run([path, "-i"], capture_output=True, text=True)
    return "aarch64" in proc.stdout


def disassemble(library: Path) -> dict[str, list[Instruction]]:
    """{function name: its instructions in address order} of the library's executable sections."""
    proc = subprocess.run([objdump(), "-d", "--no-show-raw-insn", str(library)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise UserError(f"{library}: objdump failed: {proc.stderr.strip().splitlines()[-1:]}")
    functions: dict[str, list[Instruction]] = {}
    current = None
    for line in proc.stdout.splitlines():
        if m := _FUNCTION.match(line):
            current = functions.setdefault(m.group(2), [])
        elif current is not None and (m := _INSTRUCTION.match(line)):
            current.append(Instruction(int(m.group(1), 16), m.group(2), m.group(3)))
    return functions


def hot_loops(functions: dict[str, list[Instruction]]) -> list[HotLoop]:
    """The innermost loops with a `cnt .16b`, each with its instruction and cnt counts (module rule)."""
    found = []
    for name, code in functions.items():
        loops = [(target, ins.address) for ins in code
                 if (target := ins.branch_target()) is not None and target <= ins.address
                 and code and code[0].address <= target]
        with_cnt = []
        for start, end in loops:
            body = [ins for ins in code if start <= ins.address <= end]
            if any(ins.is_byte_cnt for ins in body):
                with_cnt.append((start, end, body))
        for start, end, body in with_cnt:
            nested = any((s, e) != (start, end) and start <= s and e <= end for s, e, _ in with_cnt)
            if nested:
                continue
            mnemonics: dict[str, int] = {}
            for ins in body:
                mnemonics[ins.mnemonic] = mnemonics.get(ins.mnemonic, 0) + 1
            found.append(HotLoop(name, start, end, len(body), sum(ins.is_byte_cnt for ins in body), mnemonics))
    return found


def library_of(path) -> Path:
    """An artifact folder (its model.so, as named by manifest.json) or a library file."""
    path = Path(path)
    if path.is_dir():
        from sdbnn_deploy.run import load_manifest

        return path / load_manifest(path)["library"]
    if not path.is_file():
        raise UserError(f"{path}: no such artifact folder or library")
    return path


def count(path) -> list[HotLoop]:
    """Hot loops of the artifact or library at `path`; UserError when it has no `cnt .16b` loop."""
    library = library_of(path)
    loops = hot_loops(disassemble(library))
    if not loops:
        raise UserError(f"{library}: no loop with a NEON byte popcount (cnt .16b): not an aarch64 binary conv")
    return loops


def main(argv: list[str]) -> int:
    from sdbnn_deploy.report import table

    if len(argv) != 1:
        print("usage: python -m sdbnn_deploy.asm_count ARTIFACT_DIR_OR_LIBRARY", file=sys.stderr)
        return 2
    try:
        loops = count(argv[0])
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    rows = [[loop.function, f"{loop.start:#x}", loop.instructions, loop.byte_cnts,
             f"{loop.per_128_bit_macs:.2f}", " ".join(f"{k}:{v}" for k, v in sorted(loop.mnemonics.items()))]
            for loop in loops]
    table("hot loops (innermost loops with cnt .16b)",
                        ["function", "start", "instructions", "cnt .16b", "instr / 128 bit-MACs", "mix"], rows)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
