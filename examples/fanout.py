"""Fan-out: spawn N CPU agents, run one command on all of them at once (asyncio proxy), summarise, kill.

    swarmctl up
    python examples/fanout.py --agents 4
    # or, as a Ray job on the control plane (see the README):
    ray job submit --address "$DASHBOARD" --working-dir examples -- python fanout.py --agents 4

Prints one line per agent and a last line ``fanout: N agents, N ok, ...``; exits 1 if any command failed.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

import godel_ray as gr

COMMAND = 'echo "agent $GODEL_AGENT_ID on $(hostname)"; python -c "print(sum(range(10**6)))"'


async def fanout(proxy: gr.TransparentClusterProxy, agents: int, command: str, cpus: float) -> int:
    aio = proxy.aio()
    started = time.monotonic()
    spawned = await asyncio.gather(
        *(aio.spawn(gr.SpawnConfig(labels={"example": "fanout", "shard": str(i)}, cpus=cpus, timeout_s=600))
          for i in range(agents)),
        return_exceptions=True)
    live = [a for a in spawned if isinstance(a, gr.Agent)]
    for error in (e for e in spawned if isinstance(e, BaseException)):
        print(f"spawn failed: {error}", file=sys.stderr)
    try:
        results = await asyncio.gather(*(aio.exec(a.id, command, timeout_s=120) for a in live),
                                       return_exceptions=True)
        ok = 0
        for agent, result in zip(live, results):
            if isinstance(result, BaseException):
                print(f"{agent.id} [{agent.cluster_id}] error: {result}")
                continue
            ok += result.exit_code == 0
            last = result.stdout.strip().splitlines()[-1:] or [""]
            print(f"{agent.id} [{agent.cluster_id}] exit {result.exit_code} {result.duration_s:.2f}s: {last[0]}")
        clusters = sorted({a.cluster_id for a in live})
        print(f"fanout: {len(live)} agents, {ok} ok, {len(live) - ok + agents - len(live)} failed, "
              f"clusters {','.join(clusters) or '-'}, {time.monotonic() - started:.1f}s")
        return 0 if ok == agents else 1
    finally:
        await asyncio.gather(*(aio.kill(a.id) for a in live), return_exceptions=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=4)
    parser.add_argument("--cpus", type=float, default=0.1, help="CPUs per agent (fractions fit more per node)")
    parser.add_argument("--command", default=COMMAND)
    parser.add_argument("--state-dir", default=None, help="control plane state dir (default: ~/.godel)")
    args = parser.parse_args()
    proxy = gr.connect(args.state_dir)
    return asyncio.run(fanout(proxy, args.agents, args.command, args.cpus))


if __name__ == "__main__":
    sys.exit(main())
