"""GPU offload: run one command on an agent placed on a cluster with an nvidia-a100.

    swarmctl up && swarmctl site serve --config cluster-configs/site-gpu-cloud.yaml &
    swarmctl cluster add -f cluster-configs/cluster-gpu-cloud.yaml
    python examples/gpu_offload.py
    # or, as a Ray job on the control plane (see the README):
    ray job submit --address "$DASHBOARD" --working-dir examples -- python gpu_offload.py

Exit code: the command's, or 2 when no registered cluster has the GPU (the reasons are printed).
"""

from __future__ import annotations

import argparse
import sys

import godel_ray as gr

COMMAND = 'echo "CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-unset}"; hostname'


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu-type", default="nvidia-a100")
    parser.add_argument("--command", default=COMMAND)
    parser.add_argument("--state-dir", default=None, help="control plane state dir (default: ~/.godel)")
    args = parser.parse_args()

    proxy = gr.connect(args.state_dir)
    config = gr.SpawnConfig(model="claude-sonnet-4", labels={"example": "gpu-offload"}, timeout_s=600,
                            requires_gpu=True, gpu_type=args.gpu_type)
    try:
        agent = proxy.spawn(config)
    except gr.NoPlacement as exc:
        print(f"no cluster can host a {args.gpu_type} agent: {exc}", file=sys.stderr)
        for cluster_id, reason in sorted((exc.fields.get("reasons") or {}).items()):
            print(f"  {cluster_id}: {reason}", file=sys.stderr)
        print("register a GPU site first: swarmctl cluster add -f cluster-configs/cluster-gpu-cloud.yaml",
              file=sys.stderr)
        return 2
    try:
        print(f"agent {agent.id} on cluster {agent.cluster_id}")
        result = proxy.exec(agent.id, args.command, timeout_s=120)
        print(result.stdout, end="")
        print(result.stderr, end="", file=sys.stderr)
        print(f"exit {result.exit_code} in {result.duration_s:.2f}s")
        return result.exit_code
    finally:
        proxy.kill(agent.id)


if __name__ == "__main__":
    sys.exit(main())
