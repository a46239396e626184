"""swarmctl: the godel-ray command line (installed as the ``godel_cli`` package)."""
