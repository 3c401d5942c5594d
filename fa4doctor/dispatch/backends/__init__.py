"""The four backends, in the one order fa4doctor prefers them."""

from fa4doctor.dispatch.backends.base import Backend
from fa4doctor.dispatch.backends.fa2 import FA2
from fa4doctor.dispatch.backends.fa3 import FA3
from fa4doctor.dispatch.backends.fa4 import FA4
from fa4doctor.dispatch.backends.sdpa import SDPA
from fa4doctor.names import BackendName

PRIORITY: tuple[type[Backend], ...] = (FA4, FA3, FA2, SDPA)
BY_NAME: dict[BackendName, type[Backend]] = {b.NAME: b for b in PRIORITY}

__all__ = ["Backend", "BY_NAME", "FA2", "FA3", "FA4", "PRIORITY", "SDPA"]
