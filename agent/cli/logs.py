"""Debug logging a user can switch on (`--verbose` or KERNELWRIGHT_LOG=debug): what the loop, the
evaluator and the sandbox are doing, to stderr. Modules log through `logging.getLogger(__name__)`
under their packages' names; only the CLI configures where it goes. Logging never touches a
verdict: it reads what the code already decided."""
from __future__ import annotations

import logging
import sys

PACKAGES = ("agent", "evaluator", "sandbox", "store", "tasks")
FORMAT = "%(asctime)s.%(msecs)03d %(name)s: %(message)s"


def configure(level: str) -> None:
    """Send kernelwright's own loggers at `level` and above to stderr (once; later calls re-level)."""
    lvl = getattr(logging, level.upper())
    for name in PACKAGES:
        logger = logging.getLogger(name)
        logger.setLevel(lvl)
        if not any(getattr(h, "kernelwright", False) for h in logger.handlers):
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter(FORMAT, datefmt="%H:%M:%S"))
            handler.kernelwright = True  # type: ignore[attr-defined]
            logger.addHandler(handler)
        logger.propagate = False  # third-party root handlers (Ray's) would print it twice
