"""The balancer's side of the control-plane lease (``control/lease.py``) on a real SQLite store:
standby -> active -> deposed, the refusal a standby or deposed balancer answers with, and the
TTL setting. The store's own lease contract is in ``test_store_contract.py`` (both backends)."""

from __future__ import annotations

from pathlib import Path

import pytest

from godel_ray.control.lease import LeaseKeeper, Role, holder_name, lease_ttl_from_env
from godel_ray.control.store import open_store
from godel_ray.errors import InvalidArgument, LeaseLost, Standby
from godel_ray.models import Cluster

LIVE_S = 600.0


def test_a_standby_waits_and_a_deposed_balancer_stays_deposed(tmp_path: Path) -> None:
    store_a, store_b = open_store(tmp_path, url=""), open_store(tmp_path, url="")
    a = LeaseKeeper(store_a, "head-a", ttl_s=0.0, address="a:6379")  # lapses at once: b may take over
    b = LeaseKeeper(store_b, "head-b", ttl_s=LIVE_S, address="b:6379")
    assert a.try_acquire() and a.role is Role.ACTIVE
    store_a.put_cluster(Cluster(id="written-by-a"))
    assert b.try_acquire() and b.role is Role.ACTIVE
    # a wakes up (say after a long pause): its renewal fails, it is deposed for good, and cannot write
    assert not a.renew() and a.role is Role.DEPOSED
    assert not a.try_acquire() and a.role is Role.DEPOSED
    with pytest.raises(LeaseLost):
        store_a.put_cluster(Cluster(id="written-by-deposed-a"))
    refusal = a.refusal()
    assert isinstance(refusal, Standby) and "deposed" in str(refusal) and "head-b (ray b:6379)" in str(refusal)
    assert refusal.holder == "head-b" and refusal.address == "b:6379"
    c = LeaseKeeper(open_store(tmp_path, url=""), "head-c", ttl_s=LIVE_S)
    assert not c.try_acquire() and c.role is Role.STANDBY and "standby; active is head-b" in str(c.refusal())
    assert [x.id for x in store_b.clusters()] == ["written-by-a"]
    b.release()
    assert b.role is Role.DEPOSED and c.try_acquire()


def test_the_ttl_setting_and_the_holder_name(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("GODEL_LEASE_TTL_S", raising=False)
    assert lease_ttl_from_env() == 10.0
    monkeypatch.setenv("GODEL_LEASE_TTL_S", "2.5")
    assert lease_ttl_from_env() == 2.5
    for bad in ("0", "soon", "nan", "-1"):
        monkeypatch.setenv("GODEL_LEASE_TTL_S", bad)
        with pytest.raises(InvalidArgument, match="GODEL_LEASE_TTL_S"):
            lease_ttl_from_env()
    assert holder_name(str(tmp_path)).endswith(f":{tmp_path}")
