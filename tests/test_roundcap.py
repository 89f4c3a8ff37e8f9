"""The fixed-round policy's pure logic (harness/roundcap.py)."""

from __future__ import annotations

import pytest

from harness.roundcap import MAX_DOWNTIME_LIMIT_MS, QmpCommand, RoundCap
from sim.errors import ConfigError


def feed(cap: RoundCap, polls: list[tuple[str, int | None]]) -> list[tuple[int, QmpCommand]]:
    return [(i, cmd) for i, (status, count) in enumerate(polls) if (cmd := cap.poll(status, count)) is not None]


def test_raises_the_limit_once_k_rounds_have_ended():
    cap = RoundCap(4)
    polls = [("setup", None), ("active", 1), ("active", 1), ("active", 2), ("active", 3), ("active", 4),
             ("active", 5), ("active", 5), ("active", 6), ("completed", 6)]
    fired = feed(cap, polls)
    assert len(fired) == 1
    i, cmd = fired[0]
    assert i == 6  # count 5 = the setup sync + 4 round-ending syncs
    assert cmd == QmpCommand("migrate-set-parameters", {"downtime-limit": MAX_DOWNTIME_LIMIT_MS}, cmd.reason)
    assert "4 rounds ended" in cmd.reason and cap.fired_sync_count == 5


def test_a_skipped_poll_still_fires_once_past_the_cap():
    cap = RoundCap(2)
    fired = feed(cap, [("active", 1), ("active", 2), ("active", 5), ("active", 6)])
    assert [i for i, _ in fired] == [2] and cap.fired_sync_count == 5


def test_never_fires_before_the_cap_or_outside_the_live_phase():
    cap = RoundCap(8)
    assert feed(cap, [("active", c) for c in range(1, 9)]) == []  # 8 = setup + 7 rounds
    assert cap.poll("completed", 12) is None and cap.poll("device", 12) is None and not cap.fired
    assert cap.poll("active", 12) is not None  # the first live poll at or past the cap


def test_raw_count_like_guestperf_pause_iters():
    cap = RoundCap(3, action="pause", count_setup_sync=False)
    fired = feed(cap, [("active", 1), ("active", 2), ("active", 3)])
    assert [(i, c.execute) for i, c in fired] == [(2, "stop")]


def test_cancel_like_guestperf_max_iters_uses_greater_than():
    cap = RoundCap(30, action="cancel", count_setup_sync=False)
    assert cap.poll("active", 30) is None
    assert cap.poll("active", 31).execute == "migrate_cancel"


def test_count_never_goes_back():
    cap = RoundCap(2)
    cap.poll("active", 3)
    assert cap.fired
    cap2 = RoundCap(2)
    cap2.poll("active", 2)
    assert cap2.poll("active", 1) is None and cap2.last_sync_count == 2


def test_poll_reply_reads_query_migrate():
    cap = RoundCap(1)
    assert cap.poll_reply({"status": "active", "ram": {"dirty-sync-count": 1}}) is None
    assert cap.poll_reply({"status": "setup"}) is None
    assert cap.poll_reply({"status": "active", "ram": {"dirty-sync-count": 2}}).execute == "migrate-set-parameters"


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "4"])
def test_bad_caps_are_one_clear_error(bad):
    with pytest.raises(ConfigError, match="--max-rounds"):
        RoundCap(bad)


def test_bad_action_and_limit():
    with pytest.raises(ConfigError, match="action"):
        RoundCap(2, action="stop")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="limit_ms"):
        RoundCap(2, limit_ms=MAX_DOWNTIME_LIMIT_MS + 1)
