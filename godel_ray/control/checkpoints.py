"""``Checkpoints``: an agent's saved state, and bringing an agent back from it. One format, one write
path, one restore path, used by failover, by ``swarmctl down``/``up`` and by nothing else.

Format: in ``<state_dir>/checkpoints/`` (mode 0700), ``<agent_id>.tar.gz`` is the snapshot's archive
and ``<agent_id>.json`` its metadata and journal (the ``AgentSnapshot`` without the archive); a
``CheckpointRecord`` row in the state store points at both, with the archive's sha256.

Write path (``write_checkpoint``): each file is written to a temporary name with mode 0600, flushed
and fsynced, then renamed over the old one (atomic), then the directory is fsynced: a crash leaves
the previous checkpoint or the new one, never half of one, and no other user can read either.

Restore path (``Checkpoints.restore``): the agent is imported on the target at epoch+1 and the row
switches to it only over the row read before (compare-and-set): a kill that raced the restore wins
and the restored copy is removed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from godel_ray.control.agent_table import AgentTable
from godel_ray.control.eventlog import Emit
from godel_ray.control.ledger import CapacityLedger, Demand
from godel_ray.control.store import CheckpointRecord, Store
from godel_ray.core.cluster_client import KILL_REASON_MIGRATED
from godel_ray.errors import FailedPrecondition, GodelError
from godel_ray.models import LOCAL_CLUSTER_ID, Agent, AgentSnapshot, EventKind, EventType

if TYPE_CHECKING:
    from godel_ray.raykit.gateway import ClusterGateway


log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
DIR_MODE = 0o700
FILE_MODE = 0o600
CHECKPOINT_TIMEOUT_S = 300.0  # the export waits for the running command, then packs the workdir
SHUTDOWN_TIMEOUT_S = 180.0  # one frozen export at ``swarmctl down``
RESTORE_TIMEOUT_S = 600.0  # a new actor may need a fresh worker process, then the workdir is unpacked
CLEANUP_TIMEOUT_S = 30.0


def checkpoint_paths(state_dir: str | os.PathLike[str], agent_id: str) -> tuple[Path, Path]:
    """(archive, metadata) files of ``agent_id``'s checkpoint."""
    root = Path(state_dir) / CHECKPOINT_DIR
    return root / f"{agent_id}.tar.gz", root / f"{agent_id}.json"


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)  # an older tmp file may have had another mode
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def write_checkpoint(state_dir: str | os.PathLike[str], snapshot: AgentSnapshot, epoch: int) -> CheckpointRecord:
    """THE checkpoint write: both files atomically (tmp, fsync, rename; mode 0600), then their record."""
    archive_path, meta_path = checkpoint_paths(state_dir, snapshot.agent.id)
    root = archive_path.parent
    root.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    root.chmod(DIR_MODE)
    _write_private(archive_path, snapshot.archive)
    _write_private(meta_path, snapshot.model_copy(update={"archive": b""}).model_dump_json().encode())
    dir_fd = os.open(root, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the renames themselves are durable
    finally:
        os.close(dir_fd)
    return CheckpointRecord(snapshot.agent.id, epoch, snapshot.taken_at, str(archive_path), str(meta_path),
                            snapshot.sha256, snapshot.size_bytes)


def read_checkpoint(record: CheckpointRecord) -> AgentSnapshot:
    """THE checkpoint read: the snapshot a record points at (``OSError``/``ValueError`` when unreadable)."""
    meta = AgentSnapshot.model_validate_json(Path(record.meta_path).read_text())
    return meta.model_copy(update={"archive": Path(record.archive_path).read_bytes(), "sha256": record.sha256})


class Checkpoints:
    """Taking, keeping and restoring checkpoints.

    Invariants: the records are kept in memory (read from the store once, at ``load``) and written
    through; a checkpoint is recorded only if the agent still lives where, and at the epoch, it was
    taken; a restore holds the target's capacity while it runs, and switches the row only over the
    row it read, else it removes its copy and reports ``None``.
    """

    def __init__(self, store: Store, state_dir: str | os.PathLike[str], table: AgentTable,
                 ledger: CapacityLedger, gateway: Callable[[str], ClusterGateway], emit: Emit, *,
                 clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self.state_dir = Path(state_dir)
        self._table = table
        self._ledger = ledger
        self._gateway = gateway
        self._emit = emit
        self._clock = clock
        self._records: dict[str, CheckpointRecord] = {}

    def load(self, agent_ids: Iterable[str]) -> None:
        for agent_id in agent_ids:
            record = self._store.checkpoint(agent_id)
            if record is not None:
                self._records[agent_id] = record

    def record(self, agent_id: str) -> CheckpointRecord | None:
        return self._records.get(agent_id)

    def discard(self, agent_id: str) -> None:
        """Forget the agent's checkpoint: its record and its files."""
        self._records.pop(agent_id, None)
        self._store.delete_checkpoint(agent_id)
        for path in checkpoint_paths(self.state_dir, agent_id):
            path.unlink(missing_ok=True)

    # --- taking -------------------------------------------------------------------------------------

    async def take(self, agent: Agent, *, freeze: bool, timeout_s: float = CHECKPOINT_TIMEOUT_S
                   ) -> CheckpointRecord | None:
        """Export ``agent`` (frozen if asked) and write it; None if it moved meanwhile. Raises
        ``GodelError``/``OSError`` when the export or the write failed."""
        snapshot = await self._gateway(agent.cluster_id).export(agent.id, epoch=agent.epoch,
                                                                freeze=freeze).result(timeout_s)
        current = self._table.get(agent.id)
        if current is None or (current.cluster_id, current.epoch) != (agent.cluster_id, agent.epoch):
            return None  # moved meanwhile: this snapshot is not the agent's latest state
        record = await asyncio.to_thread(write_checkpoint, self.state_dir, snapshot, agent.epoch)
        self._store.put_checkpoint(record)  # the files are written: their record follows, whatever happened since
        self._records[agent.id] = record
        self._emit(EventKind.AGENT, EventType.AGENT_CHECKPOINTED, agent.cluster_id, agent.id, epoch=str(agent.epoch),
                   bytes=str(record.size_bytes), journal=str(len(snapshot.journal)),
                   taken_at=f"{record.taken_at:.3f}")
        return record

    async def prepare_shutdown(self, cluster_id: str = LOCAL_CLUSTER_ID) -> int:
        """Checkpoint every live agent of ``cluster_id``, frozen, so that ``up`` can restore it."""
        saved = 0
        for agent in self._table.live(cluster_id):
            try:
                if await self.take(agent, freeze=True, timeout_s=SHUTDOWN_TIMEOUT_S) is not None:
                    saved += 1
            except (GodelError, OSError) as exc:
                log.warning("agent %s: not checkpointed before shutdown: %s", agent.id, exc)
        return saved

    # --- restoring ----------------------------------------------------------------------------------

    async def restore(self, agent: Agent, target: str, *, reason: str = "") -> Agent | None:
        """Recreate ``agent`` on ``target`` from its latest checkpoint, at epoch+1.

        Returns the new row, or None when the row changed meanwhile (a kill won: the restored copy
        is removed). Raises ``GodelError``/``OSError``/``ValueError`` when no copy could be made.
        """
        record = self._records.get(agent.id)
        if record is None:
            raise FailedPrecondition(f"agent {agent.id} has no checkpoint to restore from", agent_id=agent.id)
        epoch_to = agent.epoch + 1
        reserved = target != agent.cluster_id  # else the agent's own hold there covers it
        if reserved:
            self._ledger.hold(target, agent.id, Demand.of(agent.config), self._clock(), in_flight=True)
        switched = False
        try:
            saved = await asyncio.to_thread(read_checkpoint, record)
            snapshot = saved.model_copy(update={"agent": saved.agent.model_copy(update={
                "epoch": epoch_to, "cluster_id": target, "config": agent.config})})
            there = await self._gateway(target).import_(snapshot).result(RESTORE_TIMEOUT_S)
            row = agent.model_copy(update={
                "cluster_id": target, "epoch": epoch_to, "status": there.status,
                "status_reason": reason or there.status_reason, "node_id": there.node_id,
                "gpu_ids": list(there.gpu_ids)})
            switched = self._table.replace(agent, row)
            if switched:
                return row
            log.warning("agent %s changed while it was restored on %s: removing the restored copy", agent.id, target)
            await self._kill_quietly(target, agent.id, epoch_to)
            return None
        finally:
            if reserved and not switched:
                self._ledger.release(target, agent.id, self._clock())

    async def _kill_quietly(self, cluster_id: str, agent_id: str, epoch: int) -> None:
        try:
            await self._gateway(cluster_id).kill(agent_id, epoch=epoch, reason=KILL_REASON_MIGRATED
                                                 ).result(CLEANUP_TIMEOUT_S)
        except GodelError as exc:
            log.warning("agent %s: the superseded copy on %s stays until the sweep: %s", agent_id, cluster_id, exc)


__all__ = ["CHECKPOINT_DIR", "Checkpoints", "checkpoint_paths", "read_checkpoint", "write_checkpoint"]
