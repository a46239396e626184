"""The agent itself: ``AgentActor``, a plain async class, and ``create_agent_actor``, its one factory.

One actor per agent, created with the agent's resources so Ray places it on a node that has them
(``num_cpus``, ``num_gpus``, and ``accelerator_type:<T>`` for a GPU type). ``actor_options`` is the
one place those options are decided; ``raykit.rayapi.remote_actor`` applies them, and every call
to the actor goes through the typed ``raykit.gateway.AgentGateway`` that the factory returns. The actor owns a private
working directory and runs shell commands there one at a time, streaming their output.

Invariants:
- at most one command runs at a time; commands start in the order they reached the lock (FIFO);
- while frozen no command starts. ``freeze`` (busy policy WAIT) freezes at the first idle moment: no
  command running and none waiting. Until then commands keep arriving and are served in order (the
  queue never waits on a move); past ``busy_timeout_s`` it raises ``AgentBusy`` and nothing is
  frozen. With INTERRUPT it holds new commands at once and stops the running one (SIGTERM, a grace,
  SIGKILL): its journal entry is marked interrupted and its caller gets ``CommandInterrupted``;
- once the status is final it never changes, and every new or waiting command is refused:
  ``AgentMoved`` when the agent was killed because it migrated, else ``AgentNotRunning``;
- the lifetime (``config.timeout_s``, counted from ``started_at``, which survives a move) ends the
  agent with status COMPLETED: the running command is killed and new ones are refused;
- a call that carries an epoch (a proxy's, straight to this actor: one hop) runs only while this
  actor serves the agent at exactly that epoch: another epoch is ``StaleEpoch``, a copy that was
  migrated away or fenced (restored elsewhere) is ``AgentMoved``, an ended one ``AgentNotRunning``;
  the check is made again once the command lock is held, so a refused command never started. The
  runtime did not see such a call, so its ``command.started``/``command.finished`` wait here, in
  order, until the runtime collects them (``command_events``, batched off the hot path);
- a command that hit a sandbox limit leaves the agent running, with ``status_reason`` naming the
  command and the limit; every such note and the final status count as a change (``wait_change``).
- an *importing* actor (protocol v2's prepared target) stays PENDING, serving no command, with an
  empty staging directory that workdir streams are applied to (``receive_*``), one at a time, in
  order; ``activate`` renames the staging directory to the workdir and only then runs it.

Freezing, resuming and the v2 workdir streams (``send``, ``receive_*``, ``activate``) are the
``AgentMoves`` base's (``agents.actor_moves``); the invariants above hold for them too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from typing import Any

from godel_ray.agents import sandbox as sbx
from godel_ray.agents import snapshot as snap
from godel_ray.agents.actor_moves import AgentMoves
from godel_ray.agents.inbox import Inbox
from godel_ray.agents.process import ProcessControl, kill_process_group, release_agent_cgroup, run_streaming
from godel_ray.agents.workdir import remove_tree
from godel_ray.core.cluster_client import KILL_REASON_MIGRATED, check_epoch, collect
from godel_ray.core.gpu import GPU_TYPE_RESOURCE_UNITS, gpu_type_resource
from godel_ray.core.validation import validate_command, validate_exec_timeout
from godel_ray.errors import (
    AgentMoved,
    AgentNotRunning,
    CommandInterrupted,
    FailedPrecondition,
)
from godel_ray.models import (
    Agent,
    AgentSnapshot,
    AgentStatus,
    ExecChunk,
    ExecResult,
    Isolation,
    JournalEntry,
    now_s,
)
from godel_ray.raykit import rayapi
from godel_ray.raykit.gateway import AgentGateway
from godel_ray.settings import LIMITS, Limits

log = logging.getLogger(__name__)

MAX_CONCURRENCY = 1000  # concurrent calls: many exec streams may wait on the lock
SIGKILL = 9
COMMAND_EVENTS_BATCH_S = 0.05  # ``command_events`` gathers this long after the first one: one reply for many
COMMAND_STARTED = "command.started"  # the phases of a direct call's command, as its runtime's events name them
COMMAND_FINISHED = "command.finished"


class AgentActor(AgentMoves):
    """A long-lived agent: a working directory and a shell, driven by the runtime."""

    def __init__(self, agent: Agent, workdir_root: str, archive: bytes | None = None,
                 journal: list[JournalEntry] | None = None, sha256: str = "",
                 limits: Limits = LIMITS, pooled: bool = False, importing: bool = False) -> None:
        self._agent = agent.model_copy(deep=True)
        self._importing = importing  # a prepared migration target: staging only until ``activate``
        self._workdir_root = workdir_root
        self._manifest: dict[str, Any] | None = None  # what the last stream sent (the base of a delta)
        self._inbox: Inbox | None = None
        self._pooled = pooled  # a warm-pool member: idle until ``adopt`` gives it an identity
        self._adopted = False
        self._workdir = os.path.join(workdir_root, agent.id)
        self._archive = archive
        self._sha256 = sha256
        self._limits = limits
        self._journal: list[JournalEntry] = list(journal or [])
        self._lock = asyncio.Lock()  # asyncio.Lock wakes waiters in FIFO order
        self._unfrozen = asyncio.Event()
        self._unfrozen.set()
        self._done = asyncio.Event()
        self._changes = 0  # notes and the end so far: ``wait_change`` answers when this passes what was seen
        self._changed = asyncio.Event()  # set (and replaced) at each change
        self._running: ProcessControl | None = None
        self._running_seq = 0  # the journal seq of the running command (0: none)
        self._waiting = 0  # commands in ``_acquire``: not yet holding the lock
        self._activity = asyncio.Event()  # set whenever a command leaves the lock or the queue
        self._frozen_at: float | None = None
        self._moving_to = ""  # the target of the move that froze this agent (named in CommandInterrupted)
        self._pgids: set[int] = set()  # every command's process group, for cleanup on terminate
        self._lifetime_task: asyncio.Task[None] | None = None
        self._moved = False
        self._outbox: list[tuple[str, JournalEntry]] = []  # a direct call's command phases, for the runtime
        self._outbox_ready = asyncio.Event()

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> Agent:
        """Create (or restore) the working directory and start the lifetime clock. Idempotent."""
        if self._pooled and not self._adopted:
            raise FailedPrecondition(f"actor {self._agent.id} is an idle warm-pool member: adopt it first")
        if self._importing:
            if self._agent.status == AgentStatus.PENDING:
                await asyncio.to_thread(self._fresh_staging)
            return self.info()
        if self._agent.status == AgentStatus.PENDING:
            if self._archive is not None:
                archive, self._archive = self._archive, None
                await asyncio.to_thread(snap.unpack_archive, archive, self._sha256, self._workdir,
                                        self._limits.max_snapshot_bytes)
            else:
                os.makedirs(self._workdir, mode=0o700, exist_ok=True)
            self._agent.status = AgentStatus.RUNNING
            self._agent.status_reason = ""
            self._agent.started_at = self._agent.started_at or now_s()
            if self._agent.config.timeout_s is not None:
                self._lifetime_task = asyncio.create_task(self._lifetime())
        return self.info()

    async def adopt(self, agent: Agent, workdir_root: str, archive: bytes | None = None,
                    journal: list[JournalEntry] | None = None, sha256: str = "", importing: bool = False
                    ) -> Agent:
        """Give a warm-pool member its identity (id, config, env, workdir, epoch), then ``start``.

        Only once, only on a pool member that was never started: a second adopt is refused, so
        one actor can never serve two agents.
        """
        if not self._pooled or self._adopted or self._agent.status != AgentStatus.PENDING:
            raise FailedPrecondition(f"actor {self._agent.id} is not an idle warm-pool member: "
                                     "it cannot adopt agent " + agent.id)
        self._adopted = True
        self._agent = agent.model_copy(deep=True)
        self._workdir = os.path.join(workdir_root, agent.id)
        self._workdir_root = workdir_root
        self._importing = importing
        self._archive = archive
        self._sha256 = sha256
        self._journal = list(journal or [])
        return await self.start()

    def origin(self) -> dict[str, int | bool]:
        """Where this actor came from: its process id and whether it was a warm-pool member."""
        return {"pid": os.getpid(), "pooled": self._pooled, "adopted": self._adopted}

    def ready(self) -> bool:
        """Answers once the actor's process is up (the warm pool waits for it)."""
        return True

    async def _lifetime(self) -> None:
        timeout_s = self._agent.config.timeout_s
        assert timeout_s is not None and self._agent.started_at is not None
        await asyncio.sleep(max(0.0, self._agent.started_at + timeout_s - now_s()))
        if not self._agent.status.is_final:
            self._finish(AgentStatus.COMPLETED, f"lifetime timeout of {timeout_s:g} s reached")

    def _finish(self, status: AgentStatus, reason: str) -> None:
        """Enter a final status: kill the running command, wake every waiter so it fails."""
        self._agent.status = status
        self._agent.status_reason = reason
        self._agent.finished_at = now_s()
        if self._running is not None:
            self._running.kill(reason)
        if self._lifetime_task is not None and self._lifetime_task is not asyncio.current_task():
            self._lifetime_task.cancel()
        self._unfrozen.set()
        self._done.set()
        self._activity.set()
        self._change()

    def _change(self) -> None:
        self._changes += 1
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def _refusal(self) -> FailedPrecondition:
        if self._moved:
            return AgentMoved(f"agent {self._agent.id} was migrated away from here: resolve its location "
                              "again",
                              agent_id=self._agent.id)
        return AgentNotRunning(
            f"agent {self._agent.id} is {self._agent.status.value}"
            + (f" ({self._agent.status_reason})" if self._agent.status_reason else ""),
            agent_id=self._agent.id, status=self._agent.status.value)

    def _check_running(self) -> None:
        if self._agent.status.is_final or self._agent.status == AgentStatus.PENDING:
            raise self._refusal()

    # --- commands --------------------------------------------------------------------------

    def _command_env(self) -> dict[str, str]:
        """Allow-listed in the sandbox (``sandbox.command_env``); the worker's, less Ray's credential, without."""
        own = {"GODEL_AGENT_ID": self._agent.id, "GODEL_MODEL": self._agent.config.model,
               "GODEL_WORKDIR": self._workdir}
        return sbx.command_env(os.environ, self._agent.config.env, own, self._limits.sandbox.isolation,
                               home=self._workdir)

    def _sandbox(self) -> sbx.Sandbox | None:
        """This command's sandbox; None with ``isolation: none``. ``SandboxUnavailable`` without bwrap."""
        policy, config = self._limits.sandbox, self._agent.config
        if policy.isolation == Isolation.NONE:
            return None
        return sbx.build_sandbox(self._agent.id, self._workdir, config.limits, policy,
                                 network=not config.unshare_net, gpu=config.needs_gpu)

    async def _acquire(self) -> None:
        """Take the command lock once the agent is running and not frozen (FIFO among waiters)."""
        self._waiting += 1
        try:
            while True:
                self._check_running()
                await self._unfrozen.wait()
                self._check_running()
                await self._lock.acquire()
                if self._unfrozen.is_set() and not self._agent.status.is_final:
                    return
                self._lock.release()  # frozen or ended while we waited: go round again
        finally:
            self._waiting -= 1
            self._activity.set()

    def _release(self) -> None:
        self._running_seq = 0
        self._lock.release()
        self._activity.set()

    def _idle(self) -> bool:
        """No command runs and none waits (one woken for the lock still counts as waiting)."""
        return not self._lock.locked() and self._waiting == 0

    def _check_epoch(self, epoch: int) -> None:
        """A direct call at ``epoch`` (0: from the runtime, which checked it): refused unless this
        actor serves the agent at exactly that epoch, running."""
        if not epoch:
            return
        if self._moved:
            raise self._refusal()
        check_epoch(self._agent.id, self._agent.epoch, epoch)
        self._check_running()

    def _report(self, phase: str, entry: JournalEntry) -> None:
        self._outbox.append((phase, entry.model_copy()))
        self._outbox_ready.set()

    async def exec(self, command: str, timeout_s: float | None = None, epoch: int = 0
                   ) -> AsyncIterator[ExecChunk]:
        """Run ``command`` with ``bash -c`` in the workdir; yield output chunks, then the result.

        ``epoch``: a proxy's direct call, checked here (see the module docstring)."""
        validate_command(command, self._limits)
        timeout = validate_exec_timeout(timeout_s, self._limits)
        self._check_epoch(epoch)
        await self._acquire()
        result: ExecResult | None = None
        try:
            self._check_epoch(epoch)  # moved, fenced or ended while it waited: it never starts
            seq = (self._journal[-1].seq + 1) if self._journal else 1
            entry = JournalEntry(seq=seq, command=command, started_at=now_s())
            self._journal.append(entry)
            if epoch:
                self._report(COMMAND_STARTED, entry)
            control = ProcessControl()
            self._running, self._running_seq = control, seq
            try:
                async for chunk in run_streaming(command, cwd=self._workdir, env=self._command_env(),
                                                 timeout_s=timeout, control=control,
                                                 max_output_bytes=self._limits.max_output_bytes,
                                                 chunk_bytes=self._limits.exec_chunk_bytes,
                                                 sandbox=self._sandbox()):
                    if control.pgid is not None:
                        self._pgids.add(control.pgid)
                    if chunk.result is not None:
                        result = chunk.result
                    else:
                        yield chunk
            finally:
                self._running = None
                if result is not None:
                    entry.exit_code = result.exit_code
                    entry.duration_s = result.duration_s
                    entry.timed_out = result.timed_out
                else:  # cancelled (the caller left) or failed: record how the process ended
                    entry.exit_code = control.exit_code
                    entry.duration_s = now_s() - entry.started_at
                if control.interrupted:
                    entry.interrupted, entry.interrupt_reason = True, control.kill_reason
                if epoch and result is not None:  # as the runtime: a command cut off has no finish
                    self._report(COMMAND_FINISHED, entry)
                if control.limit_reason and not self._agent.status.is_final:
                    self._agent.status_reason = f"command {seq} hit a limit: {control.limit_reason}"
                    self._change()
        finally:
            self._release()
        assert result is not None
        if entry.interrupted:
            raise self._interrupted_error(entry)
        yield ExecChunk(result=result)

    def _interrupted_error(self, entry: JournalEntry) -> CommandInterrupted:
        target = self._moving_to or "another cluster"
        return CommandInterrupted(
            f"command #{entry.seq} on agent {self._agent.id} was interrupted (exit code {entry.exit_code}) to "
            f"move the agent to {target}: it did not finish. The agent lives on {target} once the move "
            "commits; run the command again there if it is still needed (the proxy finds the agent)",
            agent_id=self._agent.id, cluster_id=self._moving_to, seq=entry.seq, exit_code=entry.exit_code,
            duration_s=round(entry.duration_s, 3), reason=entry.interrupt_reason)

    async def run(self, command: str, timeout_s: float | None = None, epoch: int = 0) -> ExecResult:
        """``exec`` collected: the whole command in one reply (no message per chunk). The same code
        runs it, so output limits, the journal and the epoch check are exactly ``exec``'s."""
        return collect([chunk async for chunk in self.exec(command, timeout_s, epoch)])

    async def command_events(self, wait: bool = True) -> tuple[list[tuple[str, JournalEntry]], bool]:
        """The phases of direct calls' commands not collected yet, oldest first, and whether the
        agent has ended. ``wait``: until there is one (or the end), then gather for
        ``COMMAND_EVENTS_BATCH_S`` more, so a busy agent answers once for many commands."""
        if wait and not self._done.is_set():
            if not self._outbox:
                ended = asyncio.ensure_future(self._done.wait())
                ready = asyncio.ensure_future(self._outbox_ready.wait())
                try:
                    await asyncio.wait({ended, ready}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    ended.cancel()
                    ready.cancel()
            if not self._done.is_set():
                await asyncio.sleep(COMMAND_EVENTS_BATCH_S)
        events, self._outbox = self._outbox, []
        self._outbox_ready.clear()
        return events, self._done.is_set()

    async def fence(self, epoch: int) -> None:
        """The agent lives at ``epoch`` elsewhere now (restored by failover): if that is newer than
        this copy's, refuse every direct call from now on (``AgentMoved``)."""
        if epoch > self._agent.epoch:
            self._moved = True

    # --- terminate (freeze/resume and workdir streams: ``AgentMoves``) ------------------------

    def _check_running_or_frozen(self) -> None:
        if self._agent.status.is_final:
            raise self._refusal()

    async def terminate(self, reason: str = "") -> Agent:
        """End the agent: kill its commands, remove its cgroup and its workdir. Idempotent; keeps a final
        status."""
        if reason == KILL_REASON_MIGRATED:
            self._moved = True
        if not self._agent.status.is_final:
            self._finish(AgentStatus.TERMINATED, reason or "killed")
        # Wait (bounded) for the running command to be reaped before removing its directory.
        try:
            await asyncio.wait_for(self._lock.acquire(), timeout=10.0)
            self._lock.release()
        except TimeoutError:
            log.warning("agent %s: running command did not stop in time", self._agent.id)
        for pgid in self._pgids:  # background children the commands left behind
            kill_process_group(pgid, SIGKILL)
        await asyncio.to_thread(release_agent_cgroup, self._agent.id)  # once those processes are gone
        if self._inbox is not None:
            self._inbox.abort()
            self._inbox = None
        if self._importing:
            await asyncio.to_thread(remove_tree, self._staging)
            return self.info()  # the workdir at this path, if any, is not this copy's
        await asyncio.to_thread(remove_tree, self._workdir)  # read-only dirs too: a re-import needs the path
        return self.info()

    # --- state -----------------------------------------------------------------------------

    async def export(self) -> AgentSnapshot:
        """Snapshot the agent: waits for the running command (takes the command lock)."""
        self._check_running_or_frozen()
        async with self._leaving_lock(), self._lock:
            self._check_running_or_frozen()
            archive, digest = await asyncio.to_thread(snap.pack_workdir, self._workdir,
                                                      self._limits.max_snapshot_bytes)
            return AgentSnapshot(agent=self.info(), journal=list(self._journal), archive=archive,
                                 sha256=digest, frozen_at=None if self._unfrozen.is_set() else self._frozen_at)

    @contextlib.asynccontextmanager
    async def _leaving_lock(self) -> AsyncIterator[None]:
        """Around ``async with self._lock``: a freeze waiting for idle hears when the lock is left."""
        try:
            yield
        finally:
            self._activity.set()

    def info(self) -> Agent:
        agent = self._agent.model_copy(deep=True)
        agent.node_id, agent.gpu_ids = rayapi.current_placement()
        return agent

    def journal(self) -> list[JournalEntry]:
        return [entry.model_copy() for entry in self._journal]

    def workdir(self) -> str:
        return self._workdir

    async def wait_change(self, seen: int = 0) -> tuple[int, Agent]:
        """Once more than ``seen`` changes happened (a limit note, the final status): (changes so far,
        the agent). The runtime follows an agent with it."""
        while self._changes <= seen:
            await self._changed.wait()
        return self._changes, self.info()


def actor_options(agent: Agent, accelerator_type: str | None = None) -> dict[str, Any]:
    """Ray options for an agent's actor: its resources, concurrency, and no restarts."""
    config = agent.config
    options: dict[str, Any] = {
        "num_cpus": config.cpus,
        "num_gpus": config.num_gpus,
        "max_concurrency": MAX_CONCURRENCY,
        "max_restarts": 0,
    }
    gpu_type = accelerator_type or (config.gpu_type if config.needs_gpu else None)
    if gpu_type:
        options["resources"] = {gpu_type_resource(gpu_type): GPU_TYPE_RESOURCE_UNITS}
    return options


def create_agent_actor(agent: Agent, workdir_root: str, archive: bytes | None = None,
                       journal: list[JournalEntry] | None = None, *, sha256: str = "",
                       accelerator_type: str | None = None, limits: Limits = LIMITS,
                       pooled: bool = False, importing: bool = False) -> AgentGateway:
    """Create the actor for ``agent`` (options from ``actor_options``); return its typed gateway.

    ``accelerator_type`` is the GPU type exactly as the cluster advertises it (the runtime resolves
    "A100" to "nvidia-a100", see ``core.gpu``); it defaults to ``agent.config.gpu_type``. Call
    ``start`` on the gateway and await it: that is where the workdir is created or restored from
    ``archive``. With ``pooled`` the actor is a warm-pool member: ``agent`` is a placeholder and
    ``adopt`` (not ``start``) later gives it its real identity. With ``importing`` it is a prepared
migration target (see ``AgentActor``). Ray errors are GodelErrors.
    """
    with rayapi.mapped(f"agent {agent.id}"):
        handle = rayapi.remote_actor(AgentActor, actor_options(agent, accelerator_type),
                                     agent, workdir_root, archive, journal, sha256, limits, pooled, importing)
    return AgentGateway(agent.id, handle)


__all__ = ["GPU_TYPE_RESOURCE_UNITS", "AgentActor", "actor_options", "create_agent_actor"]
