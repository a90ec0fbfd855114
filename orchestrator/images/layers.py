"""Which of an image's layers a node lacks, and which layer a `docker save` folder holds (pure).

Docker stores a layer under its chain id: the sha256 of the layers below it and its own diff
id, so a layer is present only together with everything below it. A node reports the layers of
every image it holds; the chain ids of their prefixes are what it has. It needs an image's
layers from the first whose chain id it lacks.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from json.decoder import scanstring  # type: ignore[attr-defined]


def chain_ids(diff_ids: Sequence[str]) -> list[str]:
    """The chain id of each prefix of a layer list: ChainID(L1) = DiffID(L1),
    ChainID(L1..Ln) = sha256(ChainID(L1..Ln-1) + " " + DiffID(Ln))."""
    chains: list[str] = []
    for diff_id in diff_ids:
        if not chains:
            chains.append(diff_id)
        else:
            joined = f"{chains[-1]} {diff_id}".encode()
            chains.append("sha256:" + hashlib.sha256(joined).hexdigest())
    return chains


def present_chain_ids(images: Iterable[Sequence[str]]) -> set[str]:
    """The chain ids a node has, from the diff ids of every image its daemon holds (the relay
    agent lists them: `docker image inspect` of `docker image ls --all`)."""
    present: set[str] = set()
    for layers in images:
        present.update(chain_ids(layers))
    return present


def missing_layers(diff_ids: Sequence[str], present: Iterable[str]) -> list[str]:
    """The distinct diff ids a node must receive, in the image's order: those at and above the
    first layer whose chain id it lacks (a layer repeated higher up is sent once)."""
    have = set(present)
    needed: list[str] = []
    for diff_id, chain in zip(diff_ids, chain_ids(diff_ids)):
        if chain not in have and diff_id not in needed:
            needed.append(diff_id)
            have.clear()  # everything above a missing layer is missing too
    return needed


def _raw_fields(text: str) -> dict[str, str]:
    """A JSON object's top-level members as key -> the value's exact text."""
    decoder = json.JSONDecoder()
    fields: dict[str, str] = {}
    i = text.index("{") + 1
    while True:
        while text[i] in " \t\r\n,":
            i += 1
        if text[i] == "}":
            return fields
        key, i = scanstring(text, i + 1)
        while text[i] in " \t\r\n:":
            i += 1
        _, end = decoder.raw_decode(text, i)
        fields[key] = text[i:end]
        i = end


def legacy_layer_chain(v1_json: str, chains: Sequence[str]) -> str | None:
    """Which of `chains` the layer of a legacy `docker save` folder holds, from its `json` file,
    before its layer.tar is read; None when that cannot be told (then hash the layer).

    Docker (moby image/v1.CreateID) names the folder sha256 of the folder's v1 config without
    its id and os (the top layer keeps os), with "layer_id": its chain id and "parent": the
    parent folder's id as a digest, keys sorted, values as written. Only a hash that matches
    counts, so a Docker that does it differently is merely not recognised.
    """
    try:
        fields = _raw_fields(v1_json)
        folder = json.loads(fields.pop("id"))
        parent = json.loads(fields.pop("parent")) if "parent" in fields else None
    except (ValueError, KeyError, IndexError):
        return None
    if parent:
        fields["parent"] = json.dumps(f"sha256:{parent}")
    for keep_os in (False, True):
        base = {k: v for k, v in fields.items() if keep_os or k != "os"}
        for chain in chains:
            members = {**base, "layer_id": json.dumps(chain)}
            body = ",".join(f"{json.dumps(k)}:{members[k]}" for k in sorted(members))
            if hashlib.sha256(("{" + body + "}").encode()).hexdigest() == folder:
                return chain
    return None
