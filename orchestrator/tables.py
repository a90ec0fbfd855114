"""One reader for the TOML tables of cluster files, vendor profiles and campaign files.

A Table checks, when it is made, that its value is a table and that it has no unknown key; its
getters check each value's type and range and return it typed. Every mistake is one line that
names the file, the key and the fix, in the words of the file's Dialect: each kind of file keeps
the wording its users know, and a check of its own raises through `Table.fail`.

    top = Table(data, "lab.toml", Dialect(), keys={"cluster", "nodes"})
    cluster = top.table("cluster", keys={"name", "master_port"})
    port = cluster.integer("master_port", 29500, low=1024, high=65535)
"""

from __future__ import annotations

import enum
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import NoReturn, TypeVar, overload

from orchestrator.errors import ConfigError, OrchestratorError

_Choice = TypeVar("_Choice", bound=str)
# What must never be in a setting: its values become lines of sbatch scripts and Dockerfiles,
# shell commands and paths, where a newline starts another instruction.
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def control_character(value: str) -> str | None:
    """The first control character (newline, tab, NUL, ...) of `value` as repr shows it."""
    found = CONTROL.search(value)
    return None if found is None else repr(found.group())


class Required(enum.Enum):
    """The default of a key that must be given."""

    KEY = "required"


REQUIRED = Required.KEY


@dataclass(frozen=True)
class Words:
    """A mistake's message and remedy, as str.format templates. The fields: `source` (the
    file), `key` (the dotted key, e.g. nodes[0].port), `name` (its last part), `value` (repr of
    what the file says), `example` (a value that would do), `low` and `high` (a range),
    `choices` and `known` (the allowed values, the known keys; comma-separated)."""

    message: str
    remedy: str


@dataclass(frozen=True)
class Dialect:
    """How one kind of file words its mistakes, and what its lists allow. The defaults are the
    cluster file's."""

    error: type[OrchestratorError] = ConfigError
    not_table: Words = Words("{source}: {key} must be a table", "write it as [{key}]")
    unknown: Words = Words("{source}: {key} is not a known key", "known keys here: {known}")
    missing: Words = Words("{source}: {key} is missing", 'add {name} = "..."')
    string: Words = Words(
        "{source}: {key} must be a non-empty string, got {value}", 'e.g. {name} = "..."'
    )
    choice: Words = Words(
        "{source}: {key} must be one of {choices}, got {value}", 'e.g. {name} = "{example}"'
    )
    integer: Words = Words(
        "{source}: {key} must be an integer between {low} and {high}, got {value}",
        "e.g. {name} = {example}",
    )
    number: Words = Words(
        "{source}: {key} must be a positive number, got {value}", "e.g. {name} = {example}"
    )
    boolean: Words = Words(
        "{source}: {key} must be true or false, got {value}", "e.g. {name} = {example}"
    )
    strings: Words = Words(
        "{source}: {key} must be a list of strings, got {value}", 'e.g. {name} = ["a", "b"]'
    )
    lone_string: bool = True  # a lone string is a list of one
    empty_list: bool = True  # [] is a list of strings
    empty_items: bool = False  # "" is an item of one


class Table:
    """One TOML table of file `source` at dotted path `where` ("" for the file itself).

    `keys`: the keys it may have (None: any, or checked later with `known`). `not_table`: the
    words for a value that is not a table, where this table words it otherwise than its dialect.
    """

    def __init__(
        self,
        value: object,
        source: str,
        dialect: Dialect,
        where: str = "",
        keys: Collection[str] | None = None,
        not_table: Words | None = None,
    ) -> None:
        self.source, self.dialect, self.where = source, dialect, where
        if not isinstance(value, Mapping):
            raise self._error(not_table or dialect.not_table, where, where.rsplit(".", 1)[-1])
        self.data: Mapping[str, object] = value
        if keys is not None:
            self.known(keys)

    def known(self, keys: Collection[str], unknown: Words | None = None) -> None:
        """Refuse a key not in `keys` (the first in sorted order), naming the known ones;
        `unknown`: the words for it, where this table words it otherwise than its dialect."""
        strange = sorted(set(self.data) - set(keys))
        if strange:
            raise self._error(
                unknown or self.dialect.unknown,
                self.path(strange[0]),
                strange[0],
                known=", ".join(sorted(keys)),
            )

    def path(self, key: str) -> str:
        """The dotted key of `key` in this table, as messages name it."""
        return f"{self.where}.{key}" if self.where else key

    def _error(self, words: Words, path: str, name: str, **fields: object) -> OrchestratorError:
        fields.update(source=self.source, key=path, name=name)
        return self.dialect.error(words.message.format(**fields), words.remedy.format(**fields))

    def _mistake(
        self, words: Words, key: str, value: object, typed: bool = False, **fields: object
    ) -> NoReturn:
        # `typed`: a number or boolean was wanted, so a quoted "1" is named as the string it is
        shown = f"the string {value!r}" if typed and isinstance(value, str) else repr(value)
        raise self._error(words, self.path(key), key, value=shown, **fields)

    def fail(self, key: str, problem: str, remedy: str) -> NoReturn:
        """A mistake that a check of the caller's own found: `<source>: <key> <problem>`."""
        raise self.dialect.error(f"{self.source}: {self.path(key)} {problem}", remedy)

    def get(self, key: str, default: object = None) -> object:
        """The value as the file has it, unchecked."""
        return self.data.get(key, default)

    def table(
        self,
        key: str,
        keys: Collection[str] | None = None,
        *,
        required: bool = False,
        not_table: Words | None = None,
    ) -> Table:
        """The table under `key`; an absent one is empty unless `required`."""
        value = self.data.get(key)
        if value is None and not required:
            value = {}
        return Table(value, self.source, self.dialect, self.path(key), keys, not_table)

    @overload
    def string(self, key: str, default: str | Required, *, choices: Sequence[str] = ()) -> str: ...

    @overload
    def string(
        self, key: str, default: object = None, *, choices: Sequence[str] = ()
    ) -> str | None: ...

    def string(
        self, key: str, default: object = None, *, choices: Sequence[str] = ()
    ) -> str | None:
        """A non-empty string, stripped; one of `choices` when they are given. An absent key is
        `default` (REQUIRED: a mistake), checked like a value: it may come from another table."""
        value = self.data.get(key)
        if value is None:
            if default is REQUIRED:
                self._mistake(self.dialect.missing, key, None)
            value = default
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            self._mistake(self.dialect.string, key, value)
        self._one_line(key, value)
        text = value.strip()
        if choices and text not in choices:
            self._mistake(
                self.dialect.choice,
                key,
                text,
                choices=", ".join(choices),
                example=default if isinstance(default, str) else choices[0],
            )
        return text

    def choice(self, key: str, default: _Choice, choices: tuple[_Choice, ...]) -> _Choice:
        """One of `choices` (a Literal type's values, orchestrator/states.py), as that type."""
        text = self.string(key, default, choices=choices)
        return next(choice for choice in choices if choice == text)

    def integer(
        self, key: str, default: int, *, low: int, high: int, example: int | None = None
    ) -> int:
        """An integer from `low` to `high` (bounds included); true and false are not integers."""
        value = self.data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            self._mistake(
                self.dialect.integer,
                key,
                value,
                typed=True,
                low=low,
                high=high,
                example=default if example is None else example,
            )
        return value

    def number(self, key: str, default: float, *, example: float | None = None) -> float:
        """A positive number (an integer or a float), as a float."""
        value = self.data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            self._mistake(
                self.dialect.number,
                key,
                value,
                typed=True,
                example=default if example is None else example,
            )
        return float(value)

    def boolean(self, key: str, default: bool, *, example: bool | None = None) -> bool:
        """true or false."""
        value = self.data.get(key, default)
        if not isinstance(value, bool):
            self._mistake(
                self.dialect.boolean,
                key,
                value,
                typed=True,
                example=str(default if example is None else example).lower(),  # as TOML has it
            )
        return value

    def strings(self, key: str, default: Sequence[str] = ()) -> tuple[str, ...]:
        """A list of strings, as the dialect allows them (a lone string, [], ""); an absent key
        is `default`, as it is."""
        value = self.data.get(key)
        if value is None:
            return tuple(default)
        if isinstance(value, str) and self.dialect.lone_string:
            value = [value]
        if (
            not isinstance(value, list)
            or not (value or self.dialect.empty_list)
            or not all(isinstance(v, str) and (v or self.dialect.empty_items) for v in value)
        ):
            self._mistake(self.dialect.strings, key, value)
        for item in value:
            self._one_line(key, item)
        return tuple(value)

    def _one_line(self, key: str, text: str) -> None:
        """Every string setting is one line without control characters (see CONTROL)."""
        found = control_character(text)
        if found is not None:
            self.fail(
                key,
                f"holds the control character {found} in {text!r}",
                "write it on one line, without newlines, tabs or other control characters",
            )
