"""The capacity ledger (pure): reservations and releases move free capacity at once; a quiet
report becomes the baseline (the site's truth wins); GPUs are counted by the site's type."""

from __future__ import annotations

import subprocess
import sys

from godel_ray.control.ledger import CapacityLedger, Demand
from godel_ray.models import Agent, AgentStatus, SpawnConfig
from tests.fakes import capacity

SETTLE_S = 5.0
ONE_CPU = Demand(cpus=1.0)


def _ledger(free_cpus: float = 1.0, total_cpus: float = 2.0, **kw: object) -> CapacityLedger:
    ledger = CapacityLedger()
    ledger.report("c", capacity(free_cpus, total_cpus, **kw), measured_at=0.0, settle_s=SETTLE_S)  # type: ignore[arg-type]
    return ledger


def test_ledger_imports_neither_ray_nor_grpc() -> None:
    code = "import sys, godel_ray.control.ledger; print(sorted(m for m in ('ray', 'grpc') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_unknown_before_the_first_report() -> None:
    ledger = CapacityLedger()
    ledger.hold("c", "a", ONE_CPU, now=1.0)
    assert ledger.capacity("c") is None and ledger.holds("c") == 1


def test_reserve_takes_and_release_frees_at_once_without_a_report() -> None:
    ledger = _ledger(free_cpus=1.0, max_agents=3, active=1)
    for n in range(10):  # spawn + kill at the edge, ten times, with no heartbeat in between
        ledger.hold("c", f"a{n}", ONE_CPU, now=10.0 + n, in_flight=True)
        taken = ledger.capacity("c")
        assert taken is not None and (taken.free_cpus, taken.active_agents, taken.available_agents) == (0.0, 2, 1)
        ledger.settle("c", f"a{n}", now=10.2 + n)
        ledger.release("c", f"a{n}", now=10.5 + n)
        freed = ledger.capacity("c")
        assert freed is not None and (freed.free_cpus, freed.active_agents, freed.available_agents) == (1.0, 1, 2)


def test_a_report_taken_during_changes_does_not_move_the_baseline() -> None:
    ledger = _ledger(free_cpus=1.0)
    ledger.hold("c", "a", ONE_CPU, now=10.0)
    ledger.release("c", "a", now=11.0)
    # a lagging heartbeat right after the kill still shows the CPU in use: not quiet, ignored
    ledger.report("c", capacity(0.0, 2.0), measured_at=11.1, settle_s=SETTLE_S)
    view = ledger.capacity("c")
    assert view is not None and view.free_cpus == 1.0


def test_a_quiet_report_wins_over_the_ledger() -> None:
    ledger = _ledger(free_cpus=1.0)
    ledger.hold("c", "a", ONE_CPU, now=10.0)
    # one heartbeat after the last change: the site's truth (another workload took the rest) wins
    ledger.report("c", capacity(0.0, 2.0, active=1), measured_at=10.0 + SETTLE_S, settle_s=SETTLE_S)
    view = ledger.capacity("c")
    assert view is not None and view.free_cpus == 0.0
    ledger.release("c", "a", now=20.0)  # and changes move from that baseline
    view = ledger.capacity("c")
    assert view is not None and view.free_cpus == 1.0 and view.active_agents == 0


def test_a_reservation_in_flight_keeps_the_report_from_being_quiet() -> None:
    ledger = _ledger(free_cpus=2.0)
    ledger.hold("c", "a", ONE_CPU, now=10.0, in_flight=True)
    ledger.report("c", capacity(2.0, 2.0), measured_at=100.0, settle_s=SETTLE_S)  # the actor is not there yet
    view = ledger.capacity("c")
    assert view is not None and view.free_cpus == 1.0


def test_holds_are_idempotent_and_release_of_nothing_is_a_no_op() -> None:
    ledger = _ledger(free_cpus=2.0)
    ledger.hold("c", "a", ONE_CPU, now=1.0, in_flight=True)
    ledger.hold("c", "a", ONE_CPU, now=2.0)  # the spawn's row: settles, does not count twice
    ledger.release("c", "zzz", now=3.0)
    view = ledger.capacity("c")
    assert view is not None and view.free_cpus == 1.0 and ledger.holds("c") == 1


def test_gpus_are_counted_by_the_sites_type() -> None:
    ledger = _ledger(free_cpus=8.0, total_cpus=8.0, free_gpus={"nvidia-a100": 2.0, "nvidia-h100": 1.0},
                     total_gpus=3.0)
    ledger.hold("c", "a", Demand(cpus=1.0, gpus=1.0, gpu_type="a100"), now=1.0)
    ledger.hold("c", "b", Demand(cpus=1.0, gpus=1.0, gpu_type="A100"), now=1.0)
    view = ledger.capacity("c")
    assert view is not None and view.free_gpus == {"nvidia-a100": 0.0, "nvidia-h100": 1.0}
    ledger.release("c", "a", now=2.0)
    view = ledger.capacity("c")
    assert view is not None and view.free_gpus["nvidia-a100"] == 1.0


def test_track_follows_rows_a_final_row_holds_nowhere_and_a_move_switches_clusters() -> None:
    ledger = _ledger(free_cpus=2.0)
    ledger.report("d", capacity(2.0, 2.0), measured_at=0.0, settle_s=SETTLE_S)
    row = Agent(id="a", config=SpawnConfig(cpus=1.0), cluster_id="c", status=AgentStatus.RUNNING)
    ledger.track(None, row, now=1.0)
    assert ledger.holds("c") == 1
    moved = row.model_copy(update={"cluster_id": "d", "epoch": 2})
    ledger.track(row, moved, now=2.0)
    assert (ledger.holds("c"), ledger.holds("d")) == (0, 1)
    ended = moved.model_copy(update={"status": AgentStatus.TERMINATED})
    ledger.track(moved, ended, now=3.0)
    assert ledger.holds("d") == 0
    view = ledger.capacity("d")
    assert view is not None and view.free_cpus == 2.0


def test_view_never_below_zero_nor_above_the_total() -> None:
    ledger = _ledger(free_cpus=0.5, total_cpus=2.0)
    ledger.hold("c", "a", ONE_CPU, now=1.0)
    view = ledger.capacity("c")
    assert view is not None and view.free_cpus == 0.0
    ledger.release("c", "a", now=2.0)
    ledger.release("c", "a", now=2.0)
    view = ledger.capacity("c")
    assert view is not None and view.free_cpus == 0.5
