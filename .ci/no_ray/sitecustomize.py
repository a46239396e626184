"""CI's pure stage (``pytest -m "not ray"``) runs with this directory first on PYTHONPATH: no Ray there.

A Ray head is a ``gcs_server`` process (with a ``raylet``), whoever starts it: ``ray start``, ``ray.init()``,
``heads.start_head``, a site or ``swarmctl up`` in a subprocess. Each of those launches the daemon from a
Python process that inherits PYTHONPATH, so Python imports this module at start-up and the audit hook
below refuses the launch. A test that fails with this message starts Ray: mark it ``pytest.mark.ray``.
"""

from __future__ import annotations

import os
import sys

RAY_DAEMONS = frozenset({"gcs_server", "raylet"})
MESSAGE = ("Ray is off in the pure test stage (-m 'not ray'), but this test starts a Ray daemon ({name}): "
           "mark the test `ray` (pytestmark = pytest.mark.ray)")


def _refuse_ray_daemons(event: str, args: tuple[object, ...]) -> None:
    if event != "subprocess.Popen":
        return
    executable, argv = args[0], args[1]
    words = [executable, *(argv if isinstance(argv, (list, tuple)) else [argv])]
    for word in words:
        if isinstance(word, (str, bytes, os.PathLike)):
            name = os.path.basename(os.fsdecode(word))
            if name in RAY_DAEMONS:
                raise RuntimeError(MESSAGE.format(name=name))


sys.addaudithook(_refuse_ray_daemons)
