"""Choosing a batch's items from the inventory, and a batch's exit status (no stack needed)."""
from __future__ import annotations

from tasks.batch import BatchSpec, select
from tasks.cli import ExitStatus, _batch_exit

INVENTORY = [
    {"host": "hv1", "name": "web-1", "snapshots": [{"name": "golden"}]},
    {"host": "hv1", "name": "db-1", "snapshots": []},
    {"host": "hv2", "name": "web-2", "snapshots": [{"name": "golden"}]},
    {"host": "hv2", "name": "twin", "snapshots": []},
    {"host": "hv3", "name": "twin", "snapshots": []},
]


def test_globs_names_and_hosts():
    items = select(INVENTORY, ["web-*"])
    assert [(i.domain, i.host, i.refusal) for i in items] == [("web-1", "hv1", None), ("web-2", "hv2", None)]
    assert [i.domain for i in select(INVENTORY, ["*"], hosts=["hv1"])] == ["db-1", "web-1"]
    assert len({i.revert_id for i in select(INVENTORY, ["*"])}) == 5


def test_unknown_and_ambiguous_names_stay_as_refusals():
    items = {i.domain: i for i in select(INVENTORY, [], names=["db-1", "ghost", "twin"])}
    assert items["db-1"].refusal is None  # no 'golden' in the inventory: the host decides
    assert items["ghost"].refusal["code"] == "domain-not-found"
    assert items["twin"].refusal["code"] == "domain-ambiguous" and "hv2, hv3" in items["twin"].refusal["message"]


def test_spec_round_trips_and_builds_requests():
    spec = BatchSpec("b1", "golden", tuple(select(INVENTORY, ["web-*"])), {"allow_respawn": True}, 2, 0, True)
    assert BatchSpec.from_json(spec.to_json()) == spec
    request = spec.request(spec.items[0])
    assert (request.domain, request.host, request.batch_id, request.allow_respawn) == ("web-1", "hv1", "b1", True)
    assert request.revert_id == spec.items[0].revert_id


def _record(*states):
    return {"finished": True, "items": [{"state": s} for s in states]}


def test_exit_statuses():
    assert _batch_exit(_record("succeeded", "succeeded")) is ExitStatus.SUCCESS
    assert _batch_exit(_record("refused", "not-started")) is ExitStatus.REFUSED
    assert _batch_exit(_record("succeeded", "failed")) is ExitStatus.PARTIAL
    assert _batch_exit(_record("succeeded", "not-started")) is ExitStatus.PARTIAL
