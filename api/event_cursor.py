"""Where the live stream stands in `job_events`: a position in id order, and the gaps below it.

Event ids come from a sequence, taken when a row is inserted; rows become visible when
their transaction commits, which is not id order. So when a read returns ids 7 and 9
above position 6, id 8 may belong to a transaction still in flight: the cursor moves to 9
and remembers 8 as a gap, asked for again by every later read until it shows up (its
commit's NOTIFY wakes the reader) or `GAP_SECONDS` pass (a rolled-back insert leaves a
gap for good). Pure bookkeeping: api/stream.py does the reading.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

# A transaction that inserted an event commits within this long, or its event is given up.
GAP_SECONDS = 60.0
# At most this many gaps are remembered (the oldest go first).
MAX_GAPS = 50_000


@dataclass
class EventCursor:
    after: int  # every id up to this one was read, or is a gap
    gaps: dict[int, float] = field(default_factory=dict)  # id -> when first missed

    @classmethod
    def starting_after(
        cls, recent_ids: Sequence[int], last_allocated: int, now: float
    ) -> EventCursor:
        """A cursor at the newest event: `recent_ids` are the ids of the last committed rows
        (ascending), `last_allocated` the sequence's last value. The ids from the first of
        them up that are missing may belong to transactions still in flight: gaps, so that
        a client who subscribes now also gets what those commit."""
        cursor = cls(after=last_allocated)
        low = recent_ids[0] if recent_ids else last_allocated + 1
        cursor.mark_missing(low, last_allocated + 1, now)
        for event_id in recent_ids:
            cursor.gaps.pop(event_id, None)
        return cursor

    def gap_ids(self) -> list[int]:
        return sorted(self.gaps)

    def take(self, ids: Sequence[int], now: float) -> None:
        """A read returned `ids` (ascending: gaps that showed up, then new ones)."""
        for event_id in ids:
            if event_id <= self.after:
                self.gaps.pop(event_id, None)
                continue
            self.mark_missing(self.after + 1, event_id, now)
            self.after = event_id
        self._forget_old_gaps(now)

    def mark_missing(self, start: int, stop: int, now: float) -> None:
        """Ids in [start, stop) were allocated but not (yet) seen (the last MAX_GAPS)."""
        for event_id in range(max(start, stop - MAX_GAPS), stop):
            self.gaps.setdefault(event_id, now)

    def _forget_old_gaps(self, now: float) -> None:
        expired = [g for g, since in self.gaps.items() if now - since > GAP_SECONDS]
        for event_id in expired:
            del self.gaps[event_id]
        if len(self.gaps) > MAX_GAPS:
            for event_id in sorted(self.gaps)[: len(self.gaps) - MAX_GAPS]:
                del self.gaps[event_id]
