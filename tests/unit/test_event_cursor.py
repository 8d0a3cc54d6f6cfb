"""EventCursor: the live stream's position in job_events, with the ids still in flight."""

from __future__ import annotations

from api.event_cursor import GAP_SECONDS, MAX_GAPS, EventCursor


def test_ids_read_in_order_move_the_position_and_leave_no_gap() -> None:
    cursor = EventCursor(after=4)
    cursor.take([5, 6, 7], now=0.0)
    assert (cursor.after, cursor.gap_ids()) == (7, [])


def test_an_id_skipped_by_a_read_is_asked_for_until_it_shows_up() -> None:
    # Given a read that returned 6 and 9 above position 5 (7 and 8 still in flight)
    cursor = EventCursor(after=5)
    cursor.take([6, 9], now=0.0)
    assert (cursor.after, cursor.gap_ids()) == (9, [7, 8])
    # When 8 commits and a later read returns it with a new id
    cursor.take([8, 10], now=1.0)
    # Then only 7 is still awaited
    assert (cursor.after, cursor.gap_ids()) == (10, [7])


def test_a_gap_that_never_commits_is_given_up() -> None:
    cursor = EventCursor(after=1)
    cursor.take([3], now=0.0)
    cursor.take([4], now=GAP_SECONDS / 2)
    assert cursor.gap_ids() == [2]
    cursor.take([], now=GAP_SECONDS + 1)
    assert cursor.gap_ids() == []


def test_a_first_cursor_starts_at_the_sequence_and_awaits_what_is_in_flight() -> None:
    # Given committed ids 5, 6 and 8 among the newest, and the sequence at 10
    cursor = EventCursor.starting_after([5, 6, 8], last_allocated=10, now=0.0)
    # Then it reads from 11 on, and 7, 9 and 10 when they commit
    assert (cursor.after, cursor.gap_ids()) == (10, [7, 9, 10])


def test_an_empty_table_starts_after_the_sequence() -> None:
    assert EventCursor.starting_after([], last_allocated=0, now=0.0) == EventCursor(after=0)
    cursor = EventCursor.starting_after([], last_allocated=42, now=0.0)
    assert (cursor.after, cursor.gap_ids()) == (42, [])


def test_gaps_are_bounded() -> None:
    # A jump far ahead (events deleted, the sequence moved on) remembers the last MAX_GAPS
    cursor = EventCursor(after=0)
    cursor.take([10 * MAX_GAPS], now=0.0)
    gaps = cursor.gap_ids()
    assert len(gaps) == MAX_GAPS
    assert gaps[0] == 9 * MAX_GAPS and gaps[-1] == 10 * MAX_GAPS - 1
