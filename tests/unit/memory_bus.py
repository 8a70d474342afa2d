"""An in-memory ``hal.types.RegisterBus`` for unit tests of profile devices.

A plain dict of (table, unit, address) → word. It records every read and write so that tests
can assert the exact requests (one read per block; FC06 vs FC16). Unknown addresses read as 0,
or raise ``DeviceAnswerError`` like an illegal-address exception when ``strict``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from hal.types import DeviceAnswerError, DeviceError
from hal.modbus.types import RequestPolicy, Table


@dataclass(frozen=True)
class Read:
    table: Table
    address: int
    count: int
    unit: int


@dataclass(frozen=True)
class Write:
    address: int
    values: tuple[int, ...]
    unit: int
    single: bool


@dataclass
class MemoryBus:
    """Serves words from ``words``; writes land in the holding table of the same dict."""

    words: dict[tuple[Table, int, int], int] = field(default_factory=dict)
    strict: bool = False
    name: str = "memory"
    reads: list[Read] = field(default_factory=list)
    writes: list[Write] = field(default_factory=list)
    #: (table, address) of a read start → the error that read raises (a refusing device).
    errors: dict[tuple[Table, int], DeviceError] = field(default_factory=dict)

    def set(self, table: Table, unit: int, address: int, values: Sequence[int]) -> None:
        """Put consecutive words (or bits) from ``address`` on."""
        for offset, value in enumerate(values):
            self.words[(table, unit, address + offset)] = value

    def read(self, table: Table, address: int, count: int, unit: int, policy: RequestPolicy) -> list[int]:
        self.reads.append(Read(table, address, count, unit))
        if (table, address) in self.errors:
            raise self.errors[(table, address)]
        result = []
        for addr in range(address, address + count):
            key = (table, unit, addr)
            if key not in self.words and self.strict:
                raise DeviceAnswerError(f"exception 2 (illegal data address) at {table.value} {addr}")
            result.append(self.words.get(key, 0))
        return result

    def write(self, address: int, values: list[int], unit: int, policy: RequestPolicy, *, single: bool = False) -> None:
        if single and len(values) != 1:
            raise DeviceAnswerError("FC06 writes exactly one register")
        self.writes.append(Write(address, tuple(values), unit, single))
        self.set(Table.HOLDING, unit, address, values)
