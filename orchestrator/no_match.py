"""What to say when a filter matches no run: the values the store does hold, so that a name
written from memory (`--vendor metax` where runs are stored as `metax-c500`) is corrected by the
message itself. Pure: the caller reads the stored values (store.web_queries.filter_options)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

PLURALS = {"--vendor": "vendors", "--topology": "topologies", "--precision": "precisions"}


def no_match(
    what: str, given: Mapping[str, str | None], stored: Mapping[str, Sequence[str]]
) -> str:
    """`given`: option -> value (e.g. {"--vendor": "metax"}); `stored`: option -> the values
    the store holds. Names each given value the store does not hold, with the ones it does:
    'no runs match --vendor metax; the store holds vendors metax-c500, nvidia'."""
    asked = " ".join(f"{option} {value}" for option, value in given.items() if value)
    return "; ".join([f"no {what} match {asked}".rstrip(), *stored_instead(given, stored)])


def stored_instead(
    given: Mapping[str, str | None], stored: Mapping[str, Sequence[str]]
) -> list[str]:
    """'the store holds vendors metax-c500, nvidia' for each given value it does not hold."""
    return [
        f"the store holds {PLURALS.get(option, option.lstrip('-'))} {_listed(stored[option])}"
        for option, value in given.items()
        if value and option in stored and value not in stored[option]
    ]


def _listed(values: Sequence[str]) -> str:
    if not values:
        return "none (it is empty)"
    shown = ", ".join(values[:12])
    return shown + (f" and {len(values) - 12} more" if len(values) > 12 else "")
