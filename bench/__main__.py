"""``python -m bench [--quick] [--json FILE] [--only exec,spawn,...]``: every figure next to its floor.

``--only failover`` injects faults into real sites (``bench.failover_bench``; ``--failover-*`` size it).

Starts a federation on this machine (control plane + two sites), measures each figure and the raw
Ray / gRPC / pipe floor it is compared with in the same run, prints the table, writes the JSON,
and stops everything it started. A missed target is reported, never an error.

``federation-scale`` (``bench.federation_scale``) brings its own control plane and hollow sites
and runs only when named: ``python -m bench --only federation-scale [--sites N] [--agents N]``.
``migration-memory`` (``bench.memory_probe``: per-process peak RSS during ~1 GB moves) also runs only
when named: ``python -m bench --only migration-memory``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import sys
import time
import traceback
from importlib import metadata

from bench import federation_scale
from bench.stats import Row, render
from bench.suite import BENCHES, NAMED_ONLY, Federation, Options, default_scale_n, workspace

STANDALONE = ("federation-scale",)  # brings its own control plane; runs only when named
ONLY_WHEN_NAMED = (*STANDALONE, *NAMED_ONLY)


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("ray", "grpcio", "godel-ray", "pydantic"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "?"
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    from bench import failover_bench  # its --failover-* flags
    failover_bench.add_arguments(parser)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions and 30 agents at scale")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON here")
    parser.add_argument("--only", metavar="NAMES",
                        help=f"comma-separated subset of: {','.join([*BENCHES, *STANDALONE])} "
                             f"({', '.join(ONLY_WHEN_NAMED)} only when named)")
    parser.add_argument("--scale", type=int, default=None, help="agents in the scale test (default 200, quick 30)")
    parser.add_argument("--sites", type=int, default=None,
                        help="federation-scale: hollow sites to register (default 100, quick 20)")
    parser.add_argument("--agents", type=int, default=None,
                        help="federation-scale: agents to spawn over them (default 1000, quick 200)")
    parser.add_argument("--heartbeat-interval", type=float, default=5.0, metavar="S",
                        help="federation-scale: each hollow site's heartbeat interval (default 5)")
    parser.add_argument("--spawn-budget", type=float, default=900.0, metavar="S",
                        help="federation-scale: start no spawn after S seconds (default 900); says how many fitted")
    args = parser.parse_args(argv)
    names = [n for n in BENCHES if n not in NAMED_ONLY] if not args.only else [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHES and n not in STANDALONE]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join([*BENCHES, *STANDALONE])}")
    for flag, value in (("--sites", args.sites), ("--agents", args.agents)):
        if value is not None and value < 1:
            parser.error(f"{flag} must be >= 1")
    scale_n, scale_note = default_scale_n(args.scale or (30 if args.quick else 200))
    opt = Options(quick=args.quick, scale_n=scale_n)
    opt.failover = failover_bench.options(args, quick=args.quick)
    notes = [scale_note] if scale_note and "scale" in names else []

    rows: list[Row] = []
    started = time.monotonic()
    for name in [n for n in names if n in STANDALONE]:
        scale = federation_scale.ScaleOptions(sites=args.sites or (20 if args.quick else 100),
                                              agents=args.agents or (200 if args.quick else 1000),
                                              heartbeat_interval_s=args.heartbeat_interval,
                                              spawn_budget_s=args.spawn_budget)
        try:
            rows += federation_scale.run(scale)
        except Exception as exc:  # noqa: BLE001 - one failing figure must not lose the others
            traceback.print_exc()
            notes.append(f"{name}: failed: {type(exc).__name__}: {str(exc)[:200]}")
        notes += scale.notes
    names = [n for n in names if n not in STANDALONE]
    if names:
        _run_federation(names, opt, rows, notes, args.quick)
    _report(rows, notes, started, args)
    return 0


def _run_federation(names: list[str], opt: Options, rows: list[Row], notes: list[str], quick: bool) -> None:
    root = workspace()
    print(f"bench: {', '.join(names)} ({'quick' if quick else 'full'}) on {os.cpu_count()} cores; "
          "starting the control plane and two sites...", file=sys.stderr, flush=True)
    fed = Federation(root)
    try:
        for name in names:
            t0 = time.monotonic()
            try:
                rows += BENCHES[name](fed, opt)
            except Exception as exc:  # noqa: BLE001 - one failing figure must not lose the others
                traceback.print_exc()
                notes.append(f"{name}: failed: {type(exc).__name__}: {str(exc)[:200]}")
            print(f"bench: {name} done in {time.monotonic() - t0:.1f} s", file=sys.stderr, flush=True)
    finally:
        fed.close()
        shutil.rmtree(root, ignore_errors=True)


def _report(rows: list[Row], notes: list[str], started: float, args: argparse.Namespace) -> None:
    elapsed = time.monotonic() - started
    date = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    print(f"\ngodel-ray bench, {date}, {os.cpu_count()} cores, {platform.machine()}, "
          f"{'quick' if args.quick else 'full'} run in {elapsed:.0f} s")
    print(render(rows))
    for note in notes:
        print(f"- {note}")
    if args.json:
        report = {"date": date, "cpu_count": os.cpu_count(), "machine": platform.machine(),
                  "versions": _versions(), "quick": args.quick, "elapsed_s": elapsed,
                  "rows": [r.to_json() for r in rows], "notes": notes}
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    sys.exit(main())
