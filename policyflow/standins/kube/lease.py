"""coordination.k8s.io/v1 Lease: decoded like the typed apiserver decodes it, validated like ValidateLease.

A Lease is a typed object, so unlike a custom resource a wrong JSON type is a 400 decode error
(``json: cannot unmarshal ...``), not a 422. ``acquireTime``/``renewTime`` are ``metav1.MicroTime``:
parsed with Go's ``time.Parse(RFC3339Micro)``, which wants exactly six fraction digits (so the
Python client's ``datetime.isoformat()`` of a whole second is refused, as by a real server), and
written back in UTC as ``2006-01-02T15:04:05.000000Z``. ``strategy``/``preferredHolder`` belong to
the CoordinatedLeaderElection feature gate, off by default in v1.32: they are dropped on write.
Sources: kubernetes ``pkg/apis/coordination/validation`` and ``pkg/registry/coordination/lease``.
"""

from __future__ import annotations

import calendar
import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from policyflow.standins.kube.errors import cause, undecodable
from policyflow.standins.kube.objects import Obj
from policyflow.standins.kube.resources import Resource

SPEC_FIELDS = {  # Go struct order of coordination/v1 LeaseSpec -> JSON type
    "holderIdentity": "string",
    "leaseDurationSeconds": "int32",
    "acquireTime": "MicroTime",
    "renewTime": "MicroTime",
    "leaseTransitions": "int32",
    "strategy": "string",
    "preferredHolder": "string",
}
_GATED = ("strategy", "preferredHolder")
_TOP_FIELDS = ("kind", "apiVersion", "metadata", "spec")
RFC3339_MICRO = "2006-01-02T15:04:05.000000Z07:00"
# time.Parse walks the layout element by element: (layout element, what it accepts, range check)
_LAYOUT: tuple[tuple[str, str, tuple[str, int, int] | None], ...] = (
    ("2006", r"\d{4}", None), ("-", "-", None), ("01", r"\d{2}", ("month", 1, 12)), ("-", "-", None),
    ("02", r"\d{2}", ("day", 1, 31)), ("T", "T", None), ("15", r"\d{1,2}", ("hour", 0, 23)), (":", ":", None),
    ("04", r"\d{2}", ("minute", 0, 59)), (":", ":", None), ("05", r"\d{2}", ("second", 0, 59)),
    (".000000", r"[.,]\d{6}", None), ("Z07:00", r"Z|[+-]\d{2}:\d{2}", None),
)  # fmt: skip
_INT32 = (-(2**31), 2**31 - 1)


def is_lease(res: Resource) -> bool:
    return (res.group, res.plural) == ("coordination.k8s.io", "leases")


def _go_quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def parse_micro_time(value: str) -> datetime:
    """``time.Parse(RFC3339Micro, value)``; ValueError carries Go's ParseError text."""
    prefix = f"parsing time {_go_quote(value)}"
    rest, parts = value, []
    for element, accepts, bounds in _LAYOUT:
        found = re.match(accepts, rest)
        if found is None:
            raise ValueError(f"{prefix} as {_go_quote(RFC3339_MICRO)}: cannot parse {_go_quote(rest)} as "
                             f"{_go_quote(element)}")  # fmt: skip
        rest, text = rest[found.end() :], found.group()
        if bounds is not None and not bounds[1] <= int(text) <= bounds[2]:
            raise ValueError(f"{prefix}: {bounds[0]} out of range")
        parts.append(text)
    if rest:
        raise ValueError(f"{prefix}: extra text: {_go_quote(rest)}")
    year, month, day, hour, minute, second = (int(parts[i]) for i in (0, 2, 4, 6, 8, 10))
    if day > calendar.monthrange(year, month)[1]:
        raise ValueError(f"{prefix}: day out of range")
    zone = parts[12]
    offset = 0 if zone == "Z" else (1 if zone[0] == "+" else -1) * (int(zone[1:3]) * 60 + int(zone[4:6]))
    tz = UTC if not offset else timezone(timedelta(minutes=offset))
    year = max(year, 1)  # Go has a year 0, Python does not
    return datetime(year, month, day, hour, minute, second, int(parts[11][1:]), tzinfo=tz)


def format_micro_time(value: datetime) -> str:
    """How ``metav1.MicroTime`` marshals: UTC, six fraction digits, ``Z``."""
    utc = value.astimezone(UTC)
    return f"{utc.year:04d}-{utc:%m-%dT%H:%M:%S.%f}Z"  # %Y does not pad years below 1000


def _go_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _decode_field(res: Resource, name: str, kind: str, value: Any) -> Any:
    where = f"Go struct field LeaseSpec.spec.{name}"
    if kind == "string":
        if not isinstance(value, str):
            raise undecodable(res, f"json: cannot unmarshal {_go_kind(value)} into {where} of type string")
        return value
    if kind == "int32":
        if isinstance(value, int) and not isinstance(value, bool) and _INT32[0] <= value <= _INT32[1]:
            return value
        literal = f"number {value}" if isinstance(value, int | float) and not isinstance(value, bool) else None
        raise undecodable(res, f"json: cannot unmarshal {literal or _go_kind(value)} into {where} of type int32")
    if not isinstance(value, str):  # MicroTime.UnmarshalJSON decodes a string first
        raise undecodable(res, f"json: cannot unmarshal {_go_kind(value)} into Go value of type string")
    try:
        return format_micro_time(parse_micro_time(value))
    except ValueError as exc:
        raise undecodable(res, str(exc)) from None


def decode_lease(res: Resource, obj: Obj, unknown: list[str]) -> Obj:
    """``obj`` as the typed decoder leaves it: unknown fields pruned (and listed in ``unknown``), nulls
    dropped, times normalized, spec in Go field order, feature-gated fields gone. Type errors are 400."""
    for key in [k for k in obj if k not in _TOP_FIELDS]:
        unknown.append(key)
        del obj[key]
    spec = obj.get("spec")
    if spec is not None and not isinstance(spec, dict):
        raise undecodable(res, f"json: cannot unmarshal {_go_kind(spec)} into Go struct field Lease.spec of type "
                               "v1.LeaseSpec")  # fmt: skip
    decoded: Obj = {}
    for key, value in (spec or {}).items():
        if key not in SPEC_FIELDS:
            unknown.append(f"spec.{key}")
        elif value is not None:
            decoded[key] = _decode_field(res, key, SPEC_FIELDS[key], value)
    obj["spec"] = {k: decoded[k] for k in SPEC_FIELDS if k in decoded and k not in _GATED}
    return obj


def validate_lease(obj: Obj) -> list[Obj]:
    """ValidateLeaseSpec's causes (ObjectMeta name syntax is not checked, as for every kind here)."""
    spec = obj.get("spec") or {}
    causes = []
    duration = spec.get("leaseDurationSeconds")
    if duration is not None and duration <= 0:
        message = f"Invalid value: {duration}: must be greater than 0"
        causes.append(cause("FieldValueInvalid", message, "spec.leaseDurationSeconds"))
    transitions = spec.get("leaseTransitions")
    if transitions is not None and transitions < 0:
        message = f"Invalid value: {transitions}: must be greater than or equal to 0"
        causes.append(cause("FieldValueInvalid", message, "spec.leaseTransitions"))
    return causes
