"""A gateway's use of the backend outbox, alone in a process, for the SIGKILL test.

``python tests/integration/outbox_writer_proc.py PATH SEED`` opens the outbox at PATH and, until
it is killed, plays three charge points: each runs transactions (a StartTransaction, five
MeterValues, a StopTransaction) while a sender delivers some of their oldest messages, as the
real gateway does (a StartTransaction gets ``backend_tx_id = 1000 + tx_key``). After each call
has RETURNED it prints one line (flushed), so a printed line is a promise the file must keep:

- ``S <tx_key> <charge point>``: a transaction and its StartTransaction were enqueued;
- ``E <seq> <charge point>``: a MeterValues or StopTransaction was enqueued;
- ``D <seq> <charge point>``: message seq was delivered;
- ``DS <tx_key> <charge point>``: the StartTransaction of tx_key was delivered.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from controller.records.backend_outbox import START, BackendOutbox  # noqa: E402

CHARGE_POINTS = ("DE-GC-0001-E1", "DE-GC-0001-E2", "DE-GC-0001-E3")
METER_VALUES_PER_TX = 5


def say(*words: object) -> None:
    print(*words, flush=True)


def enqueue(outbox: BackendOutbox, charge_point: str, charger_id: str, step: int) -> None:
    """The charge point's next message: which one is decided by ``step`` within its transaction."""
    phase = step % (METER_VALUES_PER_TX + 2)
    if phase == 0:
        tx = outbox.start_transaction(charge_point=charge_point, charger_id=charger_id, session_id=step,
                                      id_tag="TAG", meter_start_wh=step, timestamp="2026-01-01T00:00:00Z")
        say("S", tx.tx_key, charge_point)
        return
    tx_open = outbox.open_transaction(charger_id)
    assert tx_open is not None
    if phase <= METER_VALUES_PER_TX:
        message = outbox.add_meter_values(tx_open.tx_key, {"connectorId": 1, "meterValue": [
            {"timestamp": "2026-01-01T00:00:00Z", "sampledValue": [{"value": str(step)}]}]})
    else:
        message = outbox.stop_transaction(tx_open.tx_key, meter_stop_wh=step, timestamp="2026-01-01T00:00:00Z",
                                          reason="EVDisconnected")
    say("E", message.seq, charge_point)


def deliver(outbox: BackendOutbox, charge_point: str) -> None:
    message = outbox.first(charge_point)
    if message is None:
        return
    if message.action == START:
        assert message.tx_key is not None
        outbox.delivered(message.seq, backend_tx_id=1000 + message.tx_key)
        say("DS", message.tx_key, charge_point)
    else:
        outbox.delivered(message.seq)
        say("D", message.seq, charge_point)


def main(path: Path, seed: int) -> None:
    rng = random.Random(seed)
    outbox = BackendOutbox(path)
    outbox.open()
    say("ready")
    steps = dict.fromkeys(CHARGE_POINTS, 0)
    while True:
        index = rng.randrange(len(CHARGE_POINTS))
        charge_point = CHARGE_POINTS[index]
        if rng.random() < 0.4:
            deliver(outbox, charge_point)
        else:
            enqueue(outbox, charge_point, f"E{index + 1}", steps[charge_point])
            steps[charge_point] += 1


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]))
