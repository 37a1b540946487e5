"""`--detector-weights`: the detector's model files on this node, and the detector's part of the job's settings
fingerprint.

A local path (or file://) is used in place. A remote URI (s3://, hf://, memory://...) is fetched file by file
through rayinpaint.model.fetch, so it lands in the same per-node cache as the inpainting weights (one download per
node, atomic renames, `RAYINPAINT_CACHE`). For the text detector the URI names one .onnx file (default: the model
inside the rapidocr wheel). For CLIPSeg it names a folder, as `save_pretrained` writes it; only the files loading
needs are fetched, and a folder of links named as the originals is made in the cache so transformers can load it.
"""

from __future__ import annotations

import hashlib
import os

from rayinpaint.io.errors import SettingsError, redact_uri

from .spec import TEXT, DetectSettings

# What CLIPSeg's loading reads from a save_pretrained folder; any that the folder lacks is skipped, except the
# config and one weights file (safetensors preferred: loading a pickled .bin can run code).
CLIPSEG_FILES = ("config.json", "preprocessor_config.json", "processor_config.json", "tokenizer.json",
                 "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt")
CLIPSEG_WEIGHTS = ("model.safetensors", "pytorch_model.bin")


class DetectorWeightsError(SettingsError):
    """--detector-weights cannot be read (missing, unreadable, not a detector's files); one line naming the URI."""


def _fail(uri: str, why: str) -> DetectorWeightsError:
    return DetectorWeightsError(f"--detector-weights {redact_uri(uri)}: {why}")


def _fetch(uri: str, cache_dir: str | None, storage_options: dict | None):
    from rayinpaint.model.fetch import fetch

    try:
        return fetch(uri, cache_dir=cache_dir, storage_options=storage_options)
    except Exception as e:  # noqa: BLE001 - whatever the storage raised, the user gets one line naming the URI
        raise _fail(uri, f"cannot be read ({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None


def text_model_file(settings: DetectSettings, cache_dir: str | None = None,
                    storage_options: dict | None = None) -> tuple[str, str]:
    """(local path, sha256) of the text detector's .onnx model: --detector-weights, else the bundled one."""
    from rayinpaint.model.fetch import local_sha256

    if settings.weights is None:
        from .text import bundled_model_path

        path = bundled_model_path()
        if not os.path.isfile(path):
            raise DetectorWeightsError(f"the rapidocr install has no bundled detection model at {path}; reinstall "
                                       "rapidocr or pass --detector-weights")
        return path, local_sha256(path, cache_dir)
    got = _fetch(settings.weights, cache_dir, storage_options)
    return got.path, got.sha256


def _remote_names(uri: str, storage_options: dict | None) -> set[str]:
    import fsspec

    try:
        fs, root = fsspec.core.url_to_fs(uri, **(storage_options or {}))
        return {os.path.basename(p.rstrip("/")) for p in fs.ls(root, detail=False)}
    except Exception as e:  # noqa: BLE001 - one line naming the URI, whatever the storage raised
        raise _fail(uri, f"cannot be listed ({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None


def _link(target: str, path: str) -> None:
    # made under a temporary name and renamed: another actor on the node may be making the same link
    tmp = f"{path}.tmp-{os.getpid()}"
    if os.path.lexists(tmp):
        os.remove(tmp)
    os.symlink(target, tmp)
    os.replace(tmp, path)


def clipseg_folder(settings: DetectSettings, cache_dir: str | None = None,
                   storage_options: dict | None = None) -> tuple[str, str]:
    """(local folder, sha256 of its weights file) for CLIPSeg's --detector-weights."""
    from rayinpaint.model.fetch import cache_root, is_local, local_path, local_sha256

    uri = settings.weights
    if is_local(uri):
        folder = local_path(uri)
        if not os.path.isdir(folder):
            raise _fail(uri, "no such folder (a CLIPSeg save_pretrained folder is expected)")
        names = set(os.listdir(folder))
    else:
        names = _remote_names(uri, storage_options)
    weights = next((w for w in CLIPSEG_WEIGHTS if w in names), None)
    if "config.json" not in names or weights is None:
        raise _fail(uri, f"not a CLIPSeg folder: needs config.json and one of {', '.join(CLIPSEG_WEIGHTS)}")
    if is_local(uri):
        return folder, local_sha256(os.path.join(folder, weights), cache_dir)
    folder = os.path.join(cache_root(cache_dir), "detector-" + hashlib.sha256(uri.encode()).hexdigest()[:32])
    os.makedirs(folder, exist_ok=True)
    digest = None
    for name in [n for n in CLIPSEG_FILES if n in names] + [weights]:
        got = _fetch(uri.rstrip("/") + "/" + name, cache_dir, storage_options)
        _link(got.path, os.path.join(folder, name))
        digest = got.sha256 if name == weights else digest
    return folder, digest


def resolve_weights(settings: DetectSettings, cache_dir: str | None = None,
                    storage_options: dict | None = None) -> tuple[str, str]:
    """(local path, sha256 of the model file): the .onnx for text, the CLIPSeg folder for prompt. The cache folder
    and storage options default to the settings' own."""
    cache_dir = settings.cache_dir if cache_dir is None else cache_dir
    storage_options = settings.storage_options if storage_options is None else storage_options
    if settings.kind == TEXT:
        return text_model_file(settings, cache_dir, storage_options)
    return clipseg_folder(settings, cache_dir, storage_options)


def detector_identity(settings: DetectSettings, cache_dir: str | None = None,
                      storage_options: dict | None = None) -> dict:
    """What decides the masks, for the job's settings fingerprint: a change in any of these is a different mask."""
    settings.validate()
    _, digest = resolve_weights(settings, cache_dir, storage_options)
    return {"kind": settings.kind, "prompt": settings.prompt, "threshold": settings.effective_threshold,
            "max_side": settings.max_side if settings.kind == TEXT else None, "model_sha256": digest}
