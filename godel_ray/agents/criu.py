"""Whether this host could checkpoint a running command with CRIU: ``live_process_refusal``.

``--live-process`` (``BusyPolicy.LIVE_PROCESS``) asks to move an agent together with its running
command. That needs CRIU, and ``criu check`` fails on many kernels (for instance "vdso: Unexpected rt
vDSO area bounds"), so it is opt-in and nothing depends on it. Checkpoint and restore of a process
are not implemented yet: this module only says, in words a person can act on, why such a move is
refused here. No ray.
"""

from __future__ import annotations

import shutil
import subprocess

CRIU_CHECK_TIMEOUT_S = 10.0


def live_process_refusal() -> str:
    """Why a running command cannot be checkpointed with CRIU on this host (never empty)."""
    exe = shutil.which("criu")
    if exe is None:
        return "criu not installed"
    try:
        proc = subprocess.run([exe, "check"], capture_output=True, text=True, timeout=CRIU_CHECK_TIMEOUT_S,
                              check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"criu check failed: {exc}"
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        return f"criu check failed: {lines[-1].strip() if lines else f'exit code {proc.returncode}'}"[:300]
    return "criu check passes here, but checkpointing a running command with CRIU is not implemented yet"


__all__ = ["CRIU_CHECK_TIMEOUT_S", "live_process_refusal"]
