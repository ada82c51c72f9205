"""Change inference-only fields of a weights file's config; the tensors stay bitwise the same.

    python -m particlescore.training.edit_config IN.safetensors OUT.safetensors \\
        --set mixture_tied=true --set mixture_tied_clustering=true --note "why, and what it measured"

Only the fields in :data:`INFERENCE_FIELDS` may change: how the mixture candidate is searched and
its covariances estimated, and the query chunk. Every other field shapes the tensors or what the
network was trained to read. The card (the file's own, updated by the JSON card beside it where
there is one) gets the edit appended to ``config_edits`` (date, fields, old and new values, note,
sha256 of the input) and is written into OUT and to ``OUT.json``.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
from pathlib import Path

from particlescore.discoformer import file_sha256, load_weights, save_weights

#: config fields an edit may change (DiScoFormerConfig): they act after the network's inputs are fixed
INFERENCE_FIELDS = ("mixture_tied", "mixture_tied_clustering", "mixture_kmeans_start", "mixture_kmeans_restarts",
                    "mixture_birth", "mixture_scale_split", "mixture_unbiased", "mixture_loo_covariances", "mixture_loo_small_prior",
                    "mixture_merge_test",
                    "mixture_iters", "mixture_shrink", "mixture_ridge", "query_chunk")


def parse_setting(text: str) -> tuple[str, object]:
    """``FIELD=VALUE`` with VALUE in JSON (``true``, ``3``, ``0.5``)."""
    key, sep, value = text.partition("=")
    if not sep or key not in INFERENCE_FIELDS:
        raise ValueError(f"--set wants FIELD=VALUE with FIELD one of {INFERENCE_FIELDS}, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError as err:
        raise ValueError(f"--set {text!r}: the value is not JSON ({err})") from err


def edit_config(source: Path, target: Path, settings: dict, note: str) -> dict:
    """Write ``source``'s weights to ``target`` with ``settings`` applied to the config; return the card."""
    net, meta = load_weights(source)
    old = net.config
    for key, value in settings.items():
        if type(value) is not type(getattr(old, key)):
            raise ValueError(f"{key} is a {type(getattr(old, key)).__name__}, got {value!r}")
    net.config = dataclasses.replace(old, **settings)                        # __post_init__ validates
    card = json.loads(meta.get("card", "{}"))
    beside = source.with_suffix(".json")
    if beside.is_file():   # the JSON card may hold notes added after training
        card.update(json.loads(beside.read_text()))
    card["config"] = net.config.to_dict()
    edits = card.get("config_edits", [])
    if isinstance(edits, str):   # older cards: one line of text
        edits = [edits]
    card["config_edits"] = edits
    edits.append({
        "date": datetime.date.today().isoformat(), "from_sha256": file_sha256(source),
        "changed": {key: [getattr(old, key), value] for key, value in settings.items()}, "note": note})
    target.parent.mkdir(parents=True, exist_ok=True)
    card["sha256"] = save_weights(net, target, extra={"card": {k: v for k, v in card.items() if k != "sha256"}})
    target.with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n")
    return card


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("target", type=Path)
    parser.add_argument("--set", dest="settings", action="append", required=True, metavar="FIELD=VALUE")
    parser.add_argument("--note", required=True, help="why, and what it measured (goes into the card)")
    args = parser.parse_args(argv)
    try:
        settings = dict(parse_setting(s) for s in args.settings)
        card = edit_config(args.source, args.target, settings, args.note)
    except ValueError as err:
        parser.error(str(err))
    print(f"{args.target}: sha256 {card['sha256']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
