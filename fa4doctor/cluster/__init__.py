"""One verdict for a whole job: every rank's facts and decisions gathered over torch.distributed.

`agree(specs, group=None)` is the API for training scripts (a collective over the job's process
group); `job.run_rank` is what `fa4doctor cluster` runs on each rank of a launch (facts through the
job's store, so a rank that never answers is named instead of waited on). The rules that turn the
reports into a verdict are pure and live in `fa4doctor.dispatch.agreement`. Importing this package
costs nothing (no torch).
"""

from __future__ import annotations

from fa4doctor._lazy import lazy_exports

_EXPORTS = {"agree": "fa4doctor.cluster.training"}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
