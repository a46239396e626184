"""The balancer's side of the merged event log: the emitter every owner raises events through, and
the per-cluster cursors of what has been drained from each ClusterActor.

Both write through to the state store (the single writer is the balancer): an event is durable
before the call that raised it answers.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from godel_ray.control.store import Store
from godel_ray.models import EventKind, FederationEvent


class Emit(Protocol):
    """``emit(kind, type, cluster_id, agent_id, **data)``: append one event to the merged log."""

    def __call__(self, kind: EventKind, type_: str, cluster_id: str, agent_id: str = "", **data: str) -> None: ...


class Emitter:
    """Appends events to the store's merged log (each gets the next global ``seq``)."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def __call__(self, kind: EventKind, type_: str, cluster_id: str, agent_id: str = "", **data: str) -> None:
        self._store.append_events([FederationEvent(kind=kind, type=type_, cluster_id=cluster_id,
                                                   agent_id=agent_id, data=data)])

    def append(self, events: Iterable[FederationEvent]) -> list[FederationEvent]:
        """Events a cluster reported, as they were (the caller filled in ``cluster_id``)."""
        return self._store.append_events(events)


class EventCursors:
    """Per cluster: the last ClusterActor buffer seq drained, and the last site event seq stored
    (a restarted ClusterActor resumes its site's stream from it). In memory, written through;
    read from the store once, at ``load``."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._buffer: dict[str, int] = {}
        self._site: dict[str, int] = {}

    def load(self, cluster_ids: Iterable[str]) -> None:
        for cluster_id in cluster_ids:
            self._buffer[cluster_id] = self._store.event_cursor(cluster_id)
            self._site[cluster_id] = self._store.site_cursor(cluster_id)

    def buffer_seq(self, cluster_id: str) -> int:
        return self._buffer.get(cluster_id, 0)

    def advance(self, cluster_id: str, *, buffer_seq: int | None = None, site_seq: int | None = None) -> None:
        if buffer_seq is not None and self._buffer.get(cluster_id) != buffer_seq:
            self._store.put_event_cursor(cluster_id, buffer_seq)
            self._buffer[cluster_id] = buffer_seq
        if site_seq is not None and self._site.get(cluster_id) != site_seq:
            self._store.put_site_cursor(cluster_id, site_seq)
            self._site[cluster_id] = site_seq

    def reset(self, cluster_id: str) -> None:
        """A cluster registered anew reads its events from the beginning."""
        self._buffer.pop(cluster_id, None)
        self._site.pop(cluster_id, None)
        self.advance(cluster_id, buffer_seq=0, site_seq=0)

    def forget(self, cluster_id: str) -> None:
        self._buffer.pop(cluster_id, None)
        self._site.pop(cluster_id, None)


__all__ = ["Emit", "Emitter", "EventCursors"]
