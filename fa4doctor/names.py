"""The names every layer shares: the backends, the distributions that provide them, and the base
errors of a policy that names nothing valid.

Facts (`environment`), rules (`dispatch`) and readers (`probe`) all speak of backends by these
names, so they live below all of them.

>>> BackendName.parse("FA4"), DISTRIBUTIONS[BackendName.FA4]
(<BackendName.FA4: 'fa4'>, ('flash-attn-4',))
"""

from __future__ import annotations

from enum import StrEnum


class DispatchError(RuntimeError):
    """Base of the dispatcher's refusals; each carries the decision that caused it."""


class PolicyError(DispatchError, ValueError):
    """A policy setting (`FA4DOCTOR_BACKEND`, `FA4DOCTOR_DISABLE`, ...) that names nothing valid."""


class BackendName(StrEnum):
    FA4 = "fa4"
    FA3 = "fa3"
    FA2 = "fa2"
    SDPA = "sdpa"

    @classmethod
    def parse(cls, value: str, what: str = "backend") -> BackendName:
        """Accepts any case (`FA4`, `fa4`); unknown names fail with the valid ones."""
        try:
            return cls(str(value).strip().lower())
        except ValueError:
            raise PolicyError(f"{what}: unknown backend {value!r} (valid: "
                              f"{', '.join(m.value for m in cls)})") from None


# The distributions that provide each backend, best first (their metadata gives the version).
DISTRIBUTIONS: dict[BackendName, tuple[str, ...]] = {
    BackendName.FA4: ("flash-attn-4",),
    BackendName.FA3: ("flash-attn-3", "flash_attn_3"),
    BackendName.FA2: ("flash-attn",),
    BackendName.SDPA: ("torch",),
}
# Short-lived earlier names of FA4's distribution that still install `flash_attn.cute`
# (docs/sources.md#fa4-earlier-distribution-names).
OBSOLETE_DISTRIBUTIONS: dict[BackendName, tuple[str, ...]] = {BackendName.FA4: ("fa4", "flash-attn-cute")}
