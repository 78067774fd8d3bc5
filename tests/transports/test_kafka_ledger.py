"""The Kafka transport's delivery counts (``eventbus_contrib.kafka._ledger``), without a
broker: owners of one partition that hand out, settle, die or hand over, and the counts
the next owner gives. The same rules run against a broker in tests/transports/test_kafka.py
and tests/fault/test_kafka_faults.py."""

from __future__ import annotations

import pytest

pytest.importorskip("aiokafka")

from eventbus_contrib.kafka._ledger import HandOut, PartitionLedger, Verdict


class Broker:
    """What the broker keeps of one partition for one group: the committed offset and the
    last delivery record."""

    def __init__(self) -> None:
        self.committed = 0
        self.record: HandOut | None = None
        self.writes = 0

    def owner(self, ahead: int = 10) -> Owner:
        return Owner(self, PartitionLedger(self.committed, self.record, ahead=ahead))


class Owner:
    def __init__(self, broker: Broker, ledger: PartitionLedger) -> None:
        self.broker = broker
        self.ledger = ledger

    def offer(self, offset: int) -> tuple[Verdict, int]:
        """Offer the next message; hand it out (writing its record first) if admitted."""
        verdict, count = self.ledger.admit(offset)
        if verdict is Verdict.DELIVER:
            if self.ledger.record is not None:
                self.broker.record = self.ledger.record
                self.broker.writes += 1
            self.ledger.taken(offset, count)
        elif verdict is Verdict.SKIP:
            self.ledger.taken(offset, None)
        return verdict, count

    def take(self, *offsets: int) -> list[int]:
        """Offer each offset; the counts of those handed out."""
        counts = []
        for offset in offsets:
            verdict, count = self.offer(offset)
            assert verdict is Verdict.DELIVER, (offset, verdict)
            counts.append(count)
        return counts

    def settle(self, *offsets: int) -> None:
        for offset in offsets:
            self.ledger.settle(offset)

    def commit(self) -> None:
        self.broker.committed = self.ledger.committed

    def hand_over(self) -> None:
        """An orderly goodbye: commit, then leave the record."""
        self.commit()
        record = self.ledger.handover()
        if record is not None:
            self.broker.record = record


def test_a_first_owner_counts_one_and_writes_a_record_per_stretch_of_messages() -> None:
    broker = Broker()
    owner = broker.owner(ahead=10)
    assert owner.take(*range(25)) == [1] * 25
    assert broker.writes == 3  # before 0, 10 and 20: not one per message
    assert broker.record is not None
    assert broker.record.h == 30
    assert not broker.record.clean


def test_the_watermark_waits_for_the_earliest_unsettled_message() -> None:
    owner = Broker().owner()
    owner.take(0, 1, 2, 3)
    owner.settle(2, 3)
    assert owner.ledger.committed == 0
    owner.settle(0)
    assert owner.ledger.committed == 1
    owner.settle(1)
    assert owner.ledger.committed == 4


def test_after_an_orderly_handover_the_unsettled_come_back_counted_and_the_settled_not() -> None:
    broker = Broker()
    first = broker.owner()
    first.take(0, 1, 2, 3, 4)
    first.settle(0, 2, 4)
    first.hand_over()
    second = broker.owner()
    assert broker.committed == 1
    assert second.offer(1) == (Verdict.DELIVER, 2)
    assert second.offer(2)[0] is Verdict.SKIP  # settled, never committed: not again
    assert second.offer(3) == (Verdict.DELIVER, 2)  # no waiting: this was orderly
    assert second.offer(4)[0] is Verdict.SKIP
    assert second.offer(5) == (Verdict.DELIVER, 1)
    second.settle(1, 3, 5)
    assert second.ledger.committed == 6


def test_after_a_death_what_it_may_have_held_comes_back_one_at_a_time() -> None:
    broker = Broker()
    dead = broker.owner()
    dead.take(0, 1, 2)
    dead.settle(0)
    dead.commit()  # then SIGKILL: no handover
    heir = broker.owner()
    assert heir.offer(1) == (Verdict.DELIVER, 2)
    assert broker.record is not None
    assert broker.record.careful == 1  # written before it was handed out
    assert heir.ledger.admit(2)[0] is Verdict.WAIT  # alone
    heir.settle(1)
    assert heir.offer(2) == (Verdict.DELIVER, 2)
    heir.settle(2)
    for offset in range(3, 10):  # up to what the dead owner's record covered (0 + ahead)
        assert heir.take(offset) == [2]  # it may have held these: once more, and alone
        heir.settle(offset)
    assert heir.take(10, 11, 12) == [1, 1, 1]  # past it: at full speed again


def test_a_message_that_kills_every_owner_is_counted_up_one_death_at_a_time() -> None:
    broker = Broker()
    owner = broker.owner()
    owner.take(0, 1, 2)  # 1 is poison; 0 and 2 were fine but not committed
    owner.settle(0, 2)
    counts = []
    for death in range(5):  # each owner dies handling 1
        owner = broker.owner()
        verdict, _ = owner.offer(0)
        # The first heir hands 0 out again; later ones know the careful owner before
        # them settled it (its record names 1), though its commit never came.
        assert verdict is (Verdict.DELIVER if death == 0 else Verdict.SKIP)
        owner.settle(0)
        verdict, count = owner.offer(1)
        assert verdict is Verdict.DELIVER
        counts.append(count)
    assert counts == [2, 3, 4, 5, 6]
    # The worker dead-letters it past max_deliveries and acknowledges: the next message
    # (same key, never handed out again) is counted once more at most.
    owner.settle(1)
    assert owner.offer(2) == (Verdict.DELIVER, 2)


def test_a_careful_owner_that_commits_late_is_not_counted_against_the_next() -> None:
    broker = Broker()
    broker.owner().take(0, 1, 2)
    heir = broker.owner()
    heir.take(0)
    heir.settle(0)
    heir.take(1)  # its record names 1; its commit of 1 never reached the broker
    successor = broker.owner()
    assert broker.committed == 0
    assert successor.offer(0)[0] is Verdict.SKIP  # settled by the careful owner
    assert successor.offer(1) == (Verdict.DELIVER, 3)


def test_an_orderly_handover_in_the_middle_of_a_careful_range_keeps_it_careful() -> None:
    broker = Broker()
    broker.owner().take(0, 1, 2)  # dies
    heir = broker.owner()
    heir.take(0)
    heir.hand_over()  # a rebalance: 0 is still in hand
    successor = broker.owner()
    assert successor.offer(0) == (Verdict.DELIVER, 3)
    assert successor.ledger.admit(1)[0] is Verdict.WAIT


def test_a_record_older_than_the_commit_reads_carefully() -> None:
    broker = Broker()
    owner = broker.owner()
    owner.take(0, 1, 2)
    owner.settle(0)
    owner.hand_over()  # clean, w = 1
    broker.committed = 0  # the commit and the record disagree: trust neither fully
    heir = broker.owner()
    assert heir.offer(0) == (Verdict.DELIVER, 2)
    assert heir.ledger.admit(1)[0] is Verdict.WAIT


def test_a_nack_hands_out_again_counted_with_a_record_first() -> None:
    broker = Broker()
    owner = broker.owner()
    owner.take(0)
    count, record = owner.ledger.again(0)
    assert count == 2
    assert record.counts == {0: 2}
    broker.record = record
    owner.commit()  # then dies
    assert broker.owner().offer(0) == (Verdict.DELIVER, 3)


def test_messages_fetched_twice_are_ignored() -> None:
    owner = Broker().owner()
    owner.take(0, 1)
    assert owner.offer(1)[0] is Verdict.IGNORE
    assert owner.offer(0)[0] is Verdict.IGNORE


@pytest.mark.parametrize(
    "record",
    [
        HandOut(h=7),
        HandOut(h=9, counts={3: 2, 5: 4}, careful=3),
        HandOut(h=12, counts={10: 1}, clean=True, w=10),
    ],
)
def test_records_round_trip(record: HandOut) -> None:
    assert HandOut.decode(record.encode()) == record


@pytest.mark.parametrize("data", [None, b"", b"not json", b"[]", b'{"n": {}}', b'{"h": "x"}'])
def test_a_record_that_cannot_be_read_counts_as_none(data: bytes | None) -> None:
    assert HandOut.decode(data) is None
