"""What ``semcodec models`` lists: codec (layer 1) models and semantic towers (layer 0)."""

from __future__ import annotations

from .registry import codec_models, find_checkpoint


def list_models() -> list[dict]:
    """One row per registered model: name, kind, shape, description, size on disk, availability."""
    rows = []
    for name, entry in codec_models().items():
        path = find_checkpoint(name)
        rows.append({
            "name": name, "kind": "codec", "shape": f"N={entry.config.N} M={entry.config.M}",
            "description": entry.description, "available": path is not None,
            "file": str(path) if path else None, "bytes": path.stat().st_size if path else None,
        })
    rows.extend(_semantic_rows())
    return rows


def _semantic_rows() -> list[dict]:
    from .semantic import list_semantic_models

    rows = []
    for r in list_semantic_models():
        rows.append({
            "name": r["name"], "kind": "semantic", "shape": r.get("token_shape", ""),
            "description": r.get("description", ""),
            "available": bool(r.get("weights_present")) and bool(r.get("calibration_present")),
            "weights_present": r.get("weights_present"), "calibration_present": r.get("calibration_present"),
            "how_to_get": _how_to_get(r),
        })
    return rows


def _how_to_get(row: dict) -> list[str]:
    """The steps that make a tower usable here: what is missing and the command or file that provides it."""
    from ..layers.semantic.calibration import user_calibration_path

    steps = []
    if not row.get("weights_present"):
        source = row.get("weights_source") or f"open_clip {row['arch']}/{row['pretrained']}"
        steps.append(f"weights: {source} from the Hugging Face cache "
                     f"(fetched on first use where the hub is reachable), or pass --semantic-weights FILE")
    if not row.get("calibration_present"):
        steps.append(f"calibration: semcodec calibrate --semantic {row['name']} --images DIR "
                     f"-o {user_calibration_path(row['name'])}")
    return steps
