"""What a command prints: progress bars, tables and the warnings a user can act on, not the
libraries' deprecation notices (DeprecationWarning, FutureWarning: only a library upgrade
acts on them) nor Lightning's advertising and its echo of settings nobody changed."""

from __future__ import annotations

import logging
import os
import warnings

# Lightning's info lines that say nothing about this run (the GPU line, which does, stays)
LIGHTNING_NOISE = (
    "💡 Tip:",
    "TPU available:",
    "was configured so 100% of the batches",
    "to estimate number of stepping batches",
)
DEPRECATIONS = ("ignore::DeprecationWarning", "ignore::FutureWarning")


def quiet_libraries() -> None:
    """For this process and the processes it starts (DDP ranks, sweep workers), which read
    their warning filters from the environment."""
    for category in (DeprecationWarning, FutureWarning):
        warnings.simplefilter("ignore", category)
    os.environ["PYTHONWARNINGS"] = ",".join(filter(None, [os.environ.get("PYTHONWARNINGS"), *DEPRECATIONS]))
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(lambda record: not any(n in record.getMessage() for n in LIGHTNING_NOISE))
