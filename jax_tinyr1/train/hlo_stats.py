"""What a compiled program does, read from its optimized HLO text: kernels launched, bytes each
kernel moves through device memory, bytes of collectives, and the loops around them, so that a
plan can say how fast as well as how big, and a test can hold the token loop to its budget.

A kernel is a top-level instruction of a computation that runs on the device (a fusion, a
library call such as cuBLAS, a copy, a collective, a standalone op); bookkeeping instructions
(parameters, tuples, bitcasts, constants, the `-done` halves of async pairs) are not. A loop
counts its body and condition once per trip: XLA's `known_trip_count` where XLA knows it, else
the trips the caller gives (the token loop stops early on EOS; a plan takes it at its longest).

Device-memory bytes of a kernel are its operands read and its result written, with three
corrections that matter inside the token loop: a dynamic slice reads only its slice; a
dynamic-update-slice writes in place (its update, read and written), not the whole buffer;
and a fusion parameter that is only dynamically sliced inside the fusion reads only the
slices. Everything else is an upper bound (a broadcast operand read once is counted once).
"""

from __future__ import annotations

import collections
import dataclasses
import re

DTYPE_BYTES = {
    "pred": 1, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1,
    "bf16": 2, "f16": 2, "s16": 2, "u16": 2,
    "f32": 4, "s32": 4, "u32": 4,
    "f64": 8, "s64": 8, "u64": 8, "c64": 8, "c128": 16,
}  # fmt: skip
NOT_KERNELS = {
    "parameter", "constant", "get-tuple-element", "tuple", "bitcast", "after-all", "add-dependency",
    "opt-barrier", "partition-id", "replica-id", "all-gather-done", "all-reduce-done", "collective-permute-done",
    "copy-done", "send-done", "recv-done", "async-done", "async-update", "while", "conditional", "call",
}  # fmt: skip
COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute")

_SHAPE = re.compile(r"\b(" + "|".join(DTYPE_BYTES) + r")\[([0-9,]*)\]")
_COMPUTATION = re.compile(r"^(ENTRY )?%?([\w.\-]+) (?:\(.*\) -> .*)?\{$")
_INSTRUCTION = re.compile(r"^\s*(ROOT )?%?([\w.\-]+) = (.*?) ([\w\-]+)\((.*)$")
_CALLS = re.compile(r"\b(?:calls|body|condition|to_apply|branch_computations)=(?:\{([^}]*)\}|%?([\w.\-]+))")
_TRIPS = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')


def shape_bytes(text: str) -> int:
    """Bytes of every array shape in `text` (a tuple shape counts all its elements)."""
    total = 0
    for dtype, dims in _SHAPE.findall(text):
        count = 1
        for d in dims.split(","):
            if d:
                count *= int(d)
        total += count * DTYPE_BYTES[dtype]
    return total


@dataclasses.dataclass
class Instruction:
    name: str
    opcode: str
    result: str  # the result's shape text
    operands: list[str]
    attributes: str
    calls: list[str]
    arguments: str  # the text inside the parentheses (a parameter's number)

    @property
    def result_bytes(self) -> int:
        """Bytes of the result, less a library call's scratch workspace (its last, s8 element)."""
        if self.opcode == "custom-call" and self.result.startswith("("):
            return shape_bytes(re.sub(r",\s*s8\[\d+\]\{0\}\)$", ")", self.result))
        return shape_bytes(self.result)


@dataclasses.dataclass
class Computation:
    name: str
    instructions: dict[str, Instruction]
    entry: bool = False
    root: str | None = None


def _split_operands(text: str) -> tuple[str, str]:
    """(the arguments, the attributes) of `%x, %y), attrs...` (after the opening parenthesis)."""
    depth = 1
    for end, ch in enumerate(text):
        depth += ch == "("
        depth -= ch == ")"
        if depth == 0:
            return text[:end], text[end + 1 :]
    return text, ""


def parse_hlo(text: str) -> dict[str, Computation]:
    computations: dict[str, Computation] = {}
    current: Computation | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if current is None:
            found = _COMPUTATION.match(stripped)
            if found:
                current = Computation(found.group(2), {}, entry=bool(found.group(1)))
            continue
        if stripped == "}":
            computations[current.name] = current
            current = None
            continue
        found = _INSTRUCTION.match(line)
        if not found:
            continue
        root, name, result, opcode, tail = found.groups()
        arguments, attributes = _split_operands(tail)
        operands = re.findall(r"%([\w.\-]+)", arguments)
        calls = []
        for listed, single in _CALLS.findall(attributes):
            calls += [c.strip().lstrip("%") for c in (listed.split(",") if listed else [single])]
        current.instructions[name] = Instruction(name, opcode, result, operands, attributes, calls, arguments)
        if root:
            current.root = name
    return computations


@dataclasses.dataclass
class Stats:
    kernels: float = 0.0
    hbm_bytes: float = 0.0
    collective_bytes: dict[str, float] = dataclasses.field(default_factory=dict)

    def add(self, other: Stats, times: float = 1.0) -> None:
        self.kernels += other.kernels * times
        self.hbm_bytes += other.hbm_bytes * times
        for name, value in other.collective_bytes.items():
            self.collective_bytes[name] = self.collective_bytes.get(name, 0.0) + value * times


class Program:
    """A compiled program's HLO, with per-computation stats (loops expanded by their trips)."""

    def __init__(self, hlo_text: str, unknown_trips: int = 1):
        self.computations = parse_hlo(hlo_text)
        self.unknown_trips = unknown_trips
        self._cache: dict[str, Stats] = {}

    @property
    def entry(self) -> Computation:
        return next(c for c in self.computations.values() if c.entry)

    @staticmethod
    def knows_trips(loop: Instruction) -> bool:
        return _TRIPS.search(loop.attributes) is not None

    def trips(self, loop: Instruction) -> int:
        found = _TRIPS.search(loop.attributes)
        return int(found.group(1)) if found else self.unknown_trips

    def collective_ops(self) -> dict[str, int]:
        """How many of each communication op the program holds (a loop body's once)."""
        found = collections.Counter(
            i.opcode.removesuffix("-start")
            for c in self.computations.values()
            for i in c.instructions.values()
            if i.opcode.removesuffix("-start") in COLLECTIVES
        )
        return {name: found[name] for name in COLLECTIVES if found[name]}

    def loops(self, computation: Computation | None = None) -> list[Instruction]:
        """The while instructions of a computation (default the entry), in order."""
        computation = computation or self.entry
        return [i for i in computation.instructions.values() if i.opcode == "while"]

    def loop_parts(self, loop: Instruction) -> tuple[Computation, Computation]:
        body = re.search(r"body=%?([\w.\-]+)", loop.attributes).group(1)
        condition = re.search(r"condition=%?([\w.\-]+)", loop.attributes).group(1)
        return self.computations[body], self.computations[condition]

    def iteration(self, loop: Instruction) -> Stats:
        """One trip of a loop: its body and its condition."""
        body, condition = self.loop_parts(loop)
        stats = Stats()
        stats.add(self.stats(body))
        stats.add(self.stats(condition))
        return stats

    def stats(self, computation: Computation | None = None) -> Stats:
        computation = computation or self.entry
        if computation.name in self._cache:
            return self._cache[computation.name]
        stats = Stats()
        for instruction in computation.instructions.values():
            op = instruction.opcode
            if op == "while":
                stats.add(self.iteration(instruction), self.trips(instruction))
            elif op == "conditional":  # the costliest branch
                branches = [self.stats(self.computations[c]) for c in instruction.calls if c in self.computations]
                if branches:
                    stats.add(max(branches, key=lambda s: s.hbm_bytes))
            elif op == "call":
                for callee in instruction.calls:
                    if callee in self.computations:
                        stats.add(self.stats(self.computations[callee]))
            elif op not in NOT_KERNELS:
                stats.kernels += 1
                stats.hbm_bytes += self.kernel_bytes(computation, instruction)
                base = op.removesuffix("-start")
                if base in COLLECTIVES:
                    stats.collective_bytes[base] = stats.collective_bytes.get(base, 0.0) + self._gathered(instruction)
        self._cache[computation.name] = stats
        return stats

    @staticmethod
    def _gathered(instruction: Instruction) -> int:
        """A collective's result bytes (of an async start's tuple, the second half: the outputs)."""
        if instruction.opcode.endswith("-start") and instruction.result.startswith("(("):
            depth = 0
            for i, ch in enumerate(instruction.result):
                depth += ch == "("
                depth -= ch == ")"
                if depth == 1 and ch == ",":
                    return shape_bytes(instruction.result[i + 1 :])
        return instruction.result_bytes

    def kernel_bytes(self, computation: Computation, instruction: Instruction) -> int:
        def operand_bytes(name: str) -> int:
            source = computation.instructions.get(name)
            return 0 if source is None else source.result_bytes

        op = instruction.opcode
        if op == "dynamic-slice":
            return 2 * instruction.result_bytes
        if op == "dynamic-update-slice":
            return 2 * operand_bytes(instruction.operands[1])
        if op == "fusion" and instruction.calls:
            return self._fusion_bytes(computation, instruction, operand_bytes)
        written = self._gathered(instruction) if op.endswith("-start") else instruction.result_bytes
        return sum(operand_bytes(o) for o in instruction.operands) + written

    def _fusion_bytes(self, computation, instruction, operand_bytes) -> int:
        fused = self.computations.get(instruction.calls[0])
        if fused is None:
            return sum(operand_bytes(o) for o in instruction.operands) + instruction.result_bytes
        parameters = {
            i.name: int(i.arguments)
            for i in fused.instructions.values()
            if i.opcode == "parameter" and i.arguments.isdigit()
        }
        users: dict[str, list[Instruction]] = {}
        for inner in fused.instructions.values():
            for operand in inner.operands:
                users.setdefault(operand, []).append(inner)
        root = fused.instructions.get(fused.root) if fused.root else None
        in_place = root is not None and root.opcode == "dynamic-update-slice"
        total = 0
        for name, index in parameters.items():
            if index >= len(instruction.operands):
                continue
            readers = users.get(name, [])
            if readers and all(r.opcode == "dynamic-slice" and r.operands[0] == name for r in readers):
                total += sum(r.result_bytes for r in readers)
            elif in_place and root.operands[0] == name:
                continue  # the buffer updated in place is not read whole
            else:
                total += operand_bytes(instruction.operands[index])
        if in_place:
            update = fused.instructions.get(root.operands[1])
            total += 0 if update is None else update.result_bytes
        else:
            total += instruction.result_bytes
        return total
