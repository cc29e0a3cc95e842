"""Label and field selectors, parsed the way k8s.io/apimachinery does (same error messages, 400 BadRequest)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from policyflow.standins.kube.errors import error
from policyflow.standins.kube.objects import Obj
from policyflow.standins.kube.resources import Resource

Matcher = Callable[[Obj], bool]


class SelectorError(ValueError):
    """An unparsable label or field selector; the message is the apiserver's (400 BadRequest)."""


@dataclass(frozen=True)
class Requirement:
    """One label requirement: ``op`` is ``exists``, ``!``, ``=``, ``!=``, ``in``, ``notin``, ``gt``, ``lt``."""

    key: str
    op: str
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key, "")
        if self.op == "exists":
            return present
        if self.op == "!":
            return not present
        if self.op in ("=", "in"):
            return present and value in self.values
        if self.op in ("!=", "notin"):
            return not present or value not in self.values
        if not present or not re.fullmatch(r"-?\d+", value):
            return False
        return int(value) > int(self.values[0]) if self.op == "gt" else int(value) < int(self.values[0])


_BINARY_OPS = "in, notin, =, ==, !=, gt, lt"


def _lex_selector(text: str) -> list[tuple[str, str]]:
    """Tokens as k8s.io/apimachinery/pkg/labels lexes them: (kind, literal)."""
    tokens: list[tuple[str, str]] = []
    i = 0
    while i < len(text):
        if text[i].isspace():
            i += 1
        elif text.startswith(("!=", "=="), i):
            tokens.append(("op", text[i : i + 2]))
            i += 2
        elif text[i] in "=<>":
            tokens.append(("op", {"<": "lt", ">": "gt"}.get(text[i], text[i])))
            i += 1
        elif text[i] in "!(),":
            tokens.append((text[i], text[i]))
            i += 1
        else:
            j = i
            while j < len(text) and not text[j].isspace() and text[j] not in "!=<>(),":
                j += 1
            word = text[i:j]
            tokens.append(("op" if word in ("in", "notin") else "id", word))
            i = j
    return tokens


def parse_label_selector(text: str) -> list[Requirement]:
    """Parse a label selector (``a=b``, ``a==b``, ``a!=b``, ``a in (x,y)``, ``a notin (x)``, ``a``, ``!a``)."""
    tokens = _lex_selector(text)
    pos = 0

    def peek() -> tuple[str, str]:
        return tokens[pos] if pos < len(tokens) else ("end", "")

    def fail(message: str) -> SelectorError:
        return SelectorError(f"unable to parse requirement: {message}")

    requirements: list[Requirement] = []
    while tokens:
        kind, literal = peek()
        if kind not in ("id", "!"):
            raise SelectorError(f"found '{literal}', expected: !, identifier, or 'end of string'")
        negated = kind == "!"
        pos += 1 if negated else 0
        kind, key = peek()
        if kind != "id":
            raise fail(f"found '{key}', expected: identifier")
        pos += 1
        kind, literal = peek()
        if negated or kind in ("end", ","):
            requirements.append(Requirement(key, "!" if negated else "exists"))
        elif kind != "op":
            raise fail(f"found '{literal}', expected: {_BINARY_OPS}")
        else:
            pos += 1
            op = "=" if literal == "==" else literal
            if op in ("in", "notin"):
                if peek()[0] != "(":
                    raise fail(f"found '{peek()[1]}' expected: '('")
                pos += 1
                values: list[str] = []
                while peek()[0] != ")":
                    kind, literal = peek()
                    if kind == "id":
                        values.append(literal)
                        pos += 1
                    elif kind == ",":
                        pos += 1
                    else:
                        raise fail(f"found '{literal}', expected: ',', ')' or identifier")
                pos += 1
                if not values:
                    raise fail("for 'in', 'notin' operators, values set can't be empty")
                requirements.append(Requirement(key, op, tuple(values)))
            else:
                kind, literal = peek()
                if kind == "id":
                    pos += 1
                elif kind not in ("end", ","):
                    raise fail(f"found '{literal}', expected: identifier")
                value = literal if kind == "id" else ""
                if op in ("gt", "lt") and not re.fullmatch(r"-?\d+", value):
                    raise fail(f"for 'Gt', 'Lt' operators, the value must be an integer: {value!r}")
                requirements.append(Requirement(key, op, (value,)))
        kind, literal = peek()
        if kind == "end":
            break
        if kind != ",":
            raise SelectorError(f"found '{literal}', expected: ',' or 'end of string'")
        pos += 1
        if peek()[0] not in ("id", "!"):
            raise SelectorError(f"found '{peek()[1]}', expected: identifier after ','")
    return requirements


def match_labels(requirements: Iterable[Requirement], labels: Mapping[str, str] | None) -> bool:
    """True when every requirement holds for ``labels`` (an empty selector matches everything)."""
    return all(r.matches(labels or {}) for r in requirements)


def parse_field_selector(text: str) -> list[tuple[str, str, str]]:
    """Parse ``a=b,c!=d`` into ``(field, op, value)`` with op ``=`` or ``!=`` (``==`` means ``=``)."""
    out: list[tuple[str, str, str]] = []
    for term in (t for t in re.split(r"(?<!\\),", text) if t) if text else ():
        m = re.match(r"(.*?)(!=|==|=)(.*)", term, re.S)
        if not m:
            raise SelectorError(f"invalid selector: '{text}'; can't understand '{term}'")
        value = re.sub(r"\\(.)", r"\1", m.group(3))
        out.append((m.group(1), "!=" if m.group(2) == "!=" else "=", value))
    return out


def field_value(res: Resource, obj: Obj, label: str) -> str:
    """The string a field selector compares for ``label`` (booleans as Go prints them)."""
    meta = obj.get("metadata") or {}
    if label in ("metadata.name", "metadata.namespace"):
        return str(meta.get(label.split(".")[1]) or "")
    value: Any = obj
    for part in dict(res.fields)[label].split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def matcher(res: Resource, namespace: str, query: Mapping[str, str]) -> tuple[Matcher, bool]:
    """A predicate for namespace + label + field selectors, and whether any selector was given."""
    try:
        labels = parse_label_selector(query.get("labelSelector", ""))
        fields = parse_field_selector(query.get("fieldSelector", ""))
    except SelectorError as exc:
        raise error(400, str(exc)) from None
    supported = {"metadata.name", "metadata.namespace", *dict(res.fields)}
    for label, _, _ in fields:
        if label not in supported:
            raise error(400, f"field label not supported: {label}")

    def matches(obj: Obj) -> bool:
        meta = obj.get("metadata") or {}
        if namespace and meta.get("namespace") != namespace:
            return False
        if not match_labels(labels, meta.get("labels")):
            return False
        return all((field_value(res, obj, f) == v) == (op == "=") for f, op, v in fields)

    return matches, bool(labels or fields)
