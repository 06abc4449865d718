"""Provenance of weights: the terms of their training data travel with them.

A checkpoint's metadata (``smirk_edge_meta``, see :mod:`smirk_edge.training.checkpoint`) may hold

- ``terms``: list of strings, the terms of use the weights inherit from their training data (e.g.
  "non-commercial research only"). Training records the config's ``terms`` and every term of the
  checkpoint it started from (``model.init_from`` / ``finetune --from``): fine-tuning never drops a
  term of the source weights.
- ``training``: one line on how the weights were made; ``training_data``: what they were trained on;
  ``derived_from``: the chain of checkpoints (name and step) they come from.

``smirk-edge export`` copies these into the bundle's ``MODEL_CARD.md`` (:func:`card_lines`).
Standard library only.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

TERMS_KEY = "terms"
UNRECORDED = ("The checkpoint records no terms for its weights. Weights inherit the terms of the data they "
              "were trained on: find them out before using or sharing this bundle.")


def as_terms(value: Any) -> list[str]:
    """Normalise a ``terms`` value (None, a string, or a list of strings) to a list of strings."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value.strip()] if value.strip() else []
    return [str(v).strip() for v in value if str(v).strip()]


def merge_terms(*groups: Iterable[str] | str | None) -> list[str]:
    """All terms of ``groups`` in order, each once."""
    out: list[str] = []
    for g in groups:
        for t in as_terms(g):
            if t not in out:
                out.append(t)
    return out


def inherited_meta(meta: Mapping[str, Any], source: Mapping[str, Any] | None) -> dict[str, Any]:
    """``meta`` of a new checkpoint completed from the checkpoint it was trained from (``source``).

    Terms are merged (the source's first), ``training_data`` gains the source's, and the source is
    appended to ``derived_from``.
    """
    out = dict(meta)
    src = dict(source or {})
    out[TERMS_KEY] = merge_terms(src.get(TERMS_KEY), out.get(TERMS_KEY))
    if src:
        chain = list(src.get("derived_from", []))
        chain.append({k: src[k] for k in ("name", "stage", "step") if k in src})
        out["derived_from"] = chain
        labelled = sorted(set(src.get("emotion_subjects") or []) | set(out.get("emotion_subjects") or []))
        if labelled:  # whose emotion labels trained any part: a probe must not be scored on them
            out["emotion_subjects"] = labelled
        data = [d for d in (src.get("training_data"), out.get("training_data")) if d]
        if data:
            out["training_data"] = "; then ".join(dict.fromkeys(data))
    if not out[TERMS_KEY]:
        del out[TERMS_KEY]
    return out


def card_lines(meta: Mapping[str, Any]) -> list[str]:
    """The ``## Terms of the weights`` section of a model card (Markdown lines, ends with a blank)."""
    terms = as_terms(meta.get(TERMS_KEY))
    lines = ["## Terms of the weights", ""]
    if terms:
        lines += ["Recorded in the source checkpoint; they apply to every artifact of this bundle:", ""]
        lines += [f"- **{t}**" for t in terms]
    else:
        lines.append(f"- {UNRECORDED}")
    chain = meta.get("derived_from") or []
    if chain:
        lines += ["", "Derived from: " + " -> ".join(
            ", ".join(f"{k} {v}" for k, v in step.items()) or "unnamed checkpoint" for step in chain) + "."]
    return lines + [""]
