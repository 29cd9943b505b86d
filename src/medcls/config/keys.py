"""Every configuration key with its value, default and allowed values, generated from the
schema's dataclasses (so it cannot drift from them), as commented YAML usable as a preset."""

from __future__ import annotations

import dataclasses
import inspect
import re
import typing
from dataclasses import dataclass
from typing import Any

import yaml

from medcls.config.schema import _CHOICES, _RANGES, Config, preset_names

_FIELD = re.compile(r"^\s+(\w+)\s*:[^#]*(?:#\s*(.+))?$")
_ABOVE = re.compile(r"^\s+#\s*(.+)$")


@dataclass(frozen=True)
class ConfigKey:
    """One key of :class:`~medcls.config.schema.Config`: ``section.name``, its value in a config,
    its default, its type and what it may be (choices, a range or a note from the schema)."""
    key: str
    value: Any
    default: Any
    type: str
    allowed: str
    note: str


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) in (typing.Union, getattr(__import__("types"), "UnionType")):
        return " or ".join("null" if a is type(None) else _type_name(a) for a in typing.get_args(tp))
    return "any" if tp is Any else getattr(tp, "__name__", str(tp))


def _notes(cls: type) -> dict[str, str]:
    """The schema's comments on each field: the lines just above it, then the one beside it."""
    notes, above = {}, []
    for line in inspect.getsource(cls).splitlines():
        if m := _ABOVE.match(line):
            above.append(m.group(1).strip())
        elif m := _FIELD.match(line):
            notes[m.group(1)] = " ".join(above + [m.group(2).strip()] if m.group(2) else above)
            above = []
        else:
            above = []
    return notes


def _restates(note: str, choices: set) -> bool:
    """A note such as ``adam | adamw | sgd`` that only lists the allowed values."""
    return {part.strip() for part in note.split("|")} == {str(c) for c in choices}


def _named_choices() -> dict[tuple[str, str], list[str]]:
    """Keys whose allowed values are registry names (these imports load torch)."""
    from medcls.config.checks import MONITORS
    from medcls.data.datasets import DATASETS
    from medcls.models import ARCHS

    return {("data", "dataset"): DATASETS.names(), ("model", "arch"): ARCHS.names(),
            ("train", "monitor"): list(MONITORS)}


def config_keys(cfg: Config | None = None) -> list[ConfigKey]:
    """Every key of ``cfg`` (None: the defaults), in schema order."""
    cfg = cfg or Config()
    defaults, named = Config(), _named_choices()
    keys = []
    for section in dataclasses.fields(Config):
        part = getattr(cfg, section.name)
        if not dataclasses.is_dataclass(part):
            keys.append(ConfigKey(section.name, part, getattr(defaults, section.name), "str", "", ""))
            continue
        hints, notes = typing.get_type_hints(type(part)), _notes(type(part))
        for f in dataclasses.fields(part):
            where = (section.name, f.name)
            note = notes.get(f.name, "")
            if where in _CHOICES:
                note = "" if _restates(note, _CHOICES[where]) else note
                allowed = "one of " + ", ".join("null" if c is None else str(c) for c in sorted(_CHOICES[where], key=str))
            elif where in named:
                allowed = "one of " + ", ".join(named[where])
            elif where in _RANGES:
                allowed = "in [{}, {}]".format(*_RANGES[where])
            else:
                allowed = ""
            keys.append(ConfigKey(f"{section.name}.{f.name}", getattr(part, f.name),
                                  getattr(getattr(defaults, section.name), f.name), _type_name(hints[f.name]),
                                  allowed, note))
    return keys


def _scalar(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=1 << 16).strip().removesuffix("...").strip()


def config_yaml(cfg: Config | None = None) -> str:
    """``cfg`` (None: the defaults) as YAML with one comment per key: its type, default where it
    differs, allowed values and the schema's note. Loadable again with ``medcls train -c FILE``."""
    lines = ["# medcls configuration: every key; override one with --set section.key=value",
             f"# presets (-c NAME): {', '.join(preset_names())}"]
    section = None
    for k in config_keys(cfg):
        head, _, name = k.key.rpartition(".")
        if head and head != section:
            lines.append(f"{head}:")
            section = head
        facts = [k.type]
        if k.value != k.default:
            facts.append(f"default {_scalar(k.default)}")
        facts += [x for x in (k.allowed, k.note) if x]
        lines.append(f"{'  ' if head else ''}{name}: {_scalar(k.value)}  # {'; '.join(facts)}")
    return "\n".join(lines) + "\n"
