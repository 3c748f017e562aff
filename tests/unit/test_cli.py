"""CLI parsing and the exit-status table (no stack needed)."""
from __future__ import annotations

import pytest

from tasks.cli import EXIT_FOR_STATE, ExitStatus, parser
from tasks.model import RevertState


def test_exit_statuses_are_stable():
    assert [(s.name, int(s)) for s in ExitStatus] == [
        ("SUCCESS", 0), ("FAILURE", 1), ("REFUSED", 2), ("PARTIAL", 3), ("INTERRUPTED", 130)]
    assert EXIT_FOR_STATE[RevertState.REFUSED] is ExitStatus.REFUSED
    assert EXIT_FOR_STATE[RevertState.FAILED] is ExitStatus.FAILURE


def test_revert_flags():
    args = parser().parse_args(["revert", "web1", "s1", "--host", "hv1", "--paused", "--allow-respawn",
                                "--no-safety-snapshot", "--safety-memory", "--cold-boot", "--force", "--json"])
    assert (args.domain, args.snapshot, args.host, args.end_state) == ("web1", "s1", "hv1", "paused")
    assert args.allow_respawn and args.cold_boot and args.force and args.json and args.safety_memory
    assert not args.safety_snapshot and args.wait


def test_end_state_flags_are_exclusive(capsys):
    with pytest.raises(SystemExit):
        parser().parse_args(["revert", "web1", "s1", "--running", "--stopped"])
    assert "not allowed with argument" in capsys.readouterr().err


@pytest.mark.parametrize("text, seconds", [("90s", 90), ("30m", 1800), ("12h", 43200), ("7d", 604800), ("15", 15)])
def test_prune_ages(text, seconds):
    assert parser().parse_args(["prune", "web1", "--older-than", text]).older_than == seconds


def test_bad_age_is_a_usage_error(capsys):
    with pytest.raises(SystemExit):
        parser().parse_args(["prune", "web1", "--older-than", "soon"])
    assert "'soon' is not an age" in capsys.readouterr().err
