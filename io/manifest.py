"""Manifests: finding the Parquet files, checking the schema, mapping columns to canonical ones.

Canonical row (``CANONICAL_SCHEMA``), the same for every batch of every manifest:

    id               string        unique row id (integer ids are cast to their decimal text)
    image_uri        string        image location, resolved against the manifest's folder
    image_bytes      large_binary  inline encoded image (exactly one of image_uri/image_bytes is set)
    mask_uri         string        mask image location (resolved like image_uri)
    mask_bytes       large_binary  inline encoded mask image
    boxes            list<list<double>>  [[x0, y0, x1, y1], ...] pixel boxes
    mask_rle         string        COCO RLE as JSON text {"size": [h, w], "counts": ...}
    prompt           string        null -> job default
    negative_prompt  string        null -> job default
    seed             int64         null -> hash of (job seed, id)
    manifest         string        the manifest file the row came from (null if unknown)

A user column of type string holds URIs; binary holds encoded bytes. Several mask sources on one
row are combined (union). A manifest needs one mask column unless the job detects masks (``--mask-from``).
Schema problems raise ManifestError before any work; a value problem in one row (null id, missing object, bad
boxes...) becomes that row's error later, in prepare.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass, field

import pyarrow as pa

from .errors import ManifestError, SettingsError, StorageUnavailable, redact_uri
from .retry import classify
from .storage import StorageOptions, dirname_uri, filesystem, protocol_of, resolve_uri, row_error_for

CANONICAL_NAMES = ("id", "image", "mask", "boxes", "mask_rle", "prompt", "negative_prompt", "seed")
MASK_SOURCES = ("mask", "boxes", "mask_rle")

CANONICAL_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("image_uri", pa.string()),
    ("image_bytes", pa.large_binary()),
    ("mask_uri", pa.string()),
    ("mask_bytes", pa.large_binary()),
    ("boxes", pa.list_(pa.list_(pa.float64()))),
    ("mask_rle", pa.string()),
    ("prompt", pa.string()),
    ("negative_prompt", pa.string()),
    ("seed", pa.int64()),
    ("manifest", pa.string()),
])


@dataclass(frozen=True)
class ColumnMap:
    """Canonical name -> user column name; unmapped names are looked up as themselves. `mask_required`: False
    when the job detects masks (--mask-from), so a manifest of images alone is accepted."""
    names: dict = field(default_factory=dict)
    mask_required: bool = True

    def __post_init__(self):
        unknown = sorted(set(self.names) - set(CANONICAL_NAMES))
        if unknown:
            raise SettingsError(f"column map: unknown canonical column(s) {unknown}; "
                                f"known: {', '.join(CANONICAL_NAMES)}")
        for k, v in self.names.items():
            if not isinstance(v, str) or not v:
                raise SettingsError(f"column map: {k} must map to a column name, got {v!r}")

    def __hash__(self):
        return hash((tuple(sorted(self.names.items())), self.mask_required))

    @classmethod
    def parse(cls, spec: str | None, mask_required: bool = True) -> "ColumnMap":
        """"image=img_uri,mask=mask_uri" -> ColumnMap."""
        names = {}
        for part in (spec or "").split(","):
            part = part.strip()
            if not part:
                continue
            if "=" not in part:
                raise SettingsError(f"column map: expected canonical=user, got {part!r}")
            k, v = (s.strip() for s in part.split("=", 1))
            if k in names:
                raise SettingsError(f"column map: {k} mapped twice")
            names[k] = v
        return cls(names, mask_required)

    @classmethod
    def from_dict(cls, d: dict | None) -> "ColumnMap":
        return cls(dict(d or {}))

    def user(self, canonical: str) -> str:
        return self.names.get(canonical, canonical)


def list_manifest_files(uris, opts: StorageOptions | None = None, detail: bool = False) -> list:
    """Parquet files named by a file, a folder (searched recursively), a glob, or a list of those.

    Files and folders whose names start with "_" or "." (markers, temporaries) are skipped in
    folders. Raises ManifestError when something is missing or nothing is found. `detail`: (path, version)
    pairs, the version saying whether a file changed since it was last seen (`file_version`).
    """
    if isinstance(uris, str):
        uris = [uris]
    out: list = []
    for uri in uris:
        fs, path = filesystem(uri, opts)
        proto = protocol_of(uri)

        def full(p: str) -> str:
            return p if proto == "file" else fs.unstrip_protocol(p)

        out.extend((full(p), file_version(info)) for p, info in _found(uri, fs, path))
    if not out:
        raise ManifestError("no manifest given")
    return out if detail else [p for p, _ in out]


def file_version(info: dict) -> str:
    """A file's size and ETag (object stores) or modification time (local disk), from its listing: a file
    whose version is unchanged holds the same rows."""
    tag = info.get("ETag") or info.get("etag") or info.get("mtime") or info.get("LastModified") or ""
    return f"{info.get('size')}:{str(tag).strip(chr(34))}"


def _found(uri: str, fs, path: str) -> list[tuple[str, dict]]:
    """(path, listing info) of the Parquet files `uri` names, sorted by path."""
    if any(c in path for c in "*?["):
        found = sorted((p, d) for p, d in fs.glob(path, detail=True).items() if d.get("type") == "file")
        if not found:
            raise ManifestError(f"manifest glob {uri!r} matches no files")
        return found
    # fs.info, not isfile/isdir: those answer False when the store fails, which would read as "not found".
    # Storage errors propagate, for the caller to tell a store that fails from one that refuses.
    try:
        info = fs.info(path)
    except FileNotFoundError:
        raise ManifestError(f"manifest {uri!r} not found") from None
    if info.get("type") != "directory":
        return [(path, info)]
    found = sorted(
        (p, d) for p, d in fs.find(path, detail=True).items()
        if p.endswith((".parquet", ".pq"))
        and not any(part.startswith(("_", ".")) for part in p[len(path.rstrip("/")):].split("/") if part)
    )
    if not found:
        raise ManifestError(f"manifest folder {uri!r} holds no .parquet files")
    return found



def _base(t: pa.DataType) -> pa.DataType:
    return t.value_type if pa.types.is_dictionary(t) else t


def _is_str(t):
    t = _base(t)
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def _is_bin(t):
    t = _base(t)
    return pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_binary_view(t) \
        or pa.types.is_fixed_size_binary(t)


def _is_list(t):
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t) \
        or pa.types.is_list_view(t)


def _is_num(t):
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)


def _boxes_ok(t):
    return _is_list(t) and _is_list(t.value_type) and _is_num(t.value_type.value_type)


def _rle_ok(t):
    if _is_str(t) or _is_bin(t):
        return True
    if pa.types.is_struct(t):
        names = {t.field(i).name: t.field(i).type for i in range(t.num_fields)}
        return ("size" in names and "counts" in names and _is_list(names["size"])
                and (_is_str(names["counts"]) or _is_bin(names["counts"]) or _is_list(names["counts"])))
    return False


_EXPECTED = {
    "id": ("string or integer", lambda t: _is_str(t) or pa.types.is_integer(t)),
    "image": ("string (URI) or binary (encoded image)", lambda t: _is_str(t) or _is_bin(t)),
    "mask": ("string (URI) or binary (encoded mask image)", lambda t: _is_str(t) or _is_bin(t)),
    "boxes": ("list of [x0, y0, x1, y1] number lists", _boxes_ok),
    "mask_rle": ("COCO RLE as JSON string or struct{size, counts}", _rle_ok),
    "prompt": ("string", _is_str),
    "negative_prompt": ("string", _is_str),
    "seed": ("integer", lambda t: pa.types.is_integer(t)),
}


def columns_hint(canonical: str, found) -> str:
    """'map yours with --columns image=img_uri': the found column most like the canonical name (else a
    placeholder), so the fix can be copied."""
    import difflib

    free = [n for n in found if n not in CANONICAL_NAMES]
    pick = next((n for n in free if canonical in n.lower()), None)
    pick = pick or next(iter(difflib.get_close_matches(canonical, free, n=1, cutoff=0.3)), None)
    return f"map yours with --columns {canonical}={pick or '<your column>'}"


def check_schema(schema: pa.Schema, colmap: ColumnMap | None = None) -> None:
    """Fail fast with a message naming the column and what was found."""
    colmap = colmap or ColumnMap()
    present = set(schema.names)
    for canonical, user in colmap.names.items():
        if user not in present:
            raise ManifestError(f"column {user!r} (mapped to {canonical}) is not in the manifest; "
                                f"found columns: {', '.join(schema.names)}")
    for required in ("id", "image"):
        if colmap.user(required) not in present:
            raise ManifestError(f"required column {colmap.user(required)!r} ({required}) is missing; "
                                f"found columns: {', '.join(schema.names)}; {columns_hint(required, schema.names)}")
    if colmap.mask_required and not any(colmap.user(m) in present for m in MASK_SOURCES):
        raise ManifestError("no mask column: need one of " + ", ".join(
            f"{colmap.user(m)!r} ({m})" for m in MASK_SOURCES) + f"; found columns: {', '.join(schema.names)}; "
            f"{columns_hint('mask', schema.names)}, or detect masks with --mask-from text or --mask-from prompt:<what>")
    for canonical, (expected, ok) in _EXPECTED.items():
        user = colmap.user(canonical)
        if user in present:
            t = schema.field(user).type
            if not ok(t):
                raise ManifestError(f"column {user!r} ({canonical}) has type {t}; expected {expected}")


def _column(table: pa.Table, name: str) -> list:
    return table.column(name).to_pylist()


def _rle_json(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, str):
        return value
    counts = value.get("counts")
    if isinstance(counts, bytes):
        counts = counts.decode("ascii", "replace")
    return json.dumps({"size": value.get("size"), "counts": counts})


def canonicalize(table: pa.Table, colmap: ColumnMap | None = None, source_column: str | None = "path",
                 *, protocol: str | None = None, base_dir: str | None = None) -> pa.Table:
    """User batch -> CANONICAL_SCHEMA batch; row-wise, so the result never depends on batching.

    Relative URIs are resolved against the folder of the row's manifest file, read from
    ``source_column`` (Ray's ``read_parquet(include_paths=True)`` adds "path"). Ray strips the
    scheme from that path ("bucket/dir/m.parquet"); pass ``protocol="s3"`` to put it back. Without
    a source column, ``base_dir`` (if given) is used for every row.
    """
    colmap = colmap or ColumnMap()
    check_schema(table.schema, colmap)
    n = table.num_rows
    present = set(table.schema.names)

    def user_col(canonical):
        name = colmap.user(canonical)
        return name if name in present else None

    if source_column and source_column in present:
        sources = []
        for p in _column(table, source_column):
            if p is not None and protocol and protocol != "file" and "://" not in p:
                p = f"{protocol}://{p}"
            sources.append(p)
        bases = [dirname_uri(p) if p else base_dir for p in sources]
    else:
        sources = [None] * n
        bases = [base_dir] * n

    out: dict[str, list] = {}
    # id: integer ids become their decimal text; "" stays "" and is a row error in prepare.
    ids = _column(table, user_col("id"))
    out["id"] = [None if v is None else str(v) for v in ids]

    for key in ("image", "mask"):
        name = user_col(key)
        uris, blobs = [None] * n, [None] * n
        if name is not None:
            t = table.schema.field(name).type
            vals = _column(table, name)
            if _is_str(t):
                uris = [None if v is None else resolve_uri(v, b) for v, b in zip(vals, bases)]
            else:
                blobs = [None if v is None else bytes(v) for v in vals]
        out[f"{key}_uri"], out[f"{key}_bytes"] = uris, blobs

    name = user_col("boxes")
    out["boxes"] = ([None if v is None else [[float(x) if x is not None else None for x in box]
                                             if box is not None else None for box in v]
                     for v in _column(table, name)] if name else [None] * n)
    name = user_col("mask_rle")
    out["mask_rle"] = [_rle_json(v) for v in _column(table, name)] if name else [None] * n
    for key in ("prompt", "negative_prompt", "seed"):
        name = user_col(key)
        out[key] = _column(table, name) if name else [None] * n
    out["manifest"] = sources
    try:
        return pa.Table.from_pydict(out, schema=CANONICAL_SCHEMA)
    except (pa.ArrowInvalid, OverflowError) as exc:  # e.g. uint64 seeds beyond int64
        raise ManifestError(f"manifest values do not fit the canonical schema: {exc}") from None


@contextmanager
def manifest_storage_errors(uri: str, action: str):
    """Storage failures while scanning the manifest become one clear line: StorageUnavailable when they may
    pass (transient, after the client's retries), a ManifestError when they will not (not found, access
    denied, another storage refusal). Anything that is not a storage error keeps its traceback."""
    try:
        yield
    except (ManifestError, SettingsError):
        raise
    except Exception as e:  # noqa: BLE001 - sorted below
        verdict = classify(e)
        if verdict == "permanent" and not isinstance(e, (OSError, pa.ArrowException)):
            raise
        detail = f"{type(e).__name__}: {redact_uri(str(e).splitlines()[0] if str(e) else '')[:200]}"
        if verdict == "transient":
            raise StorageUnavailable(f"manifest {redact_uri(uri)}: {action} kept failing after the storage "
                                     f"client's retries ({detail}); nothing was started: rerun the same command "
                                     f"when the store answers again") from None
        if verdict == "permanent":  # an OSError or Arrow error that is no store's verdict (one line, not a traceback)
            raise ManifestError(f"manifest {redact_uri(uri)}: {action} failed ({detail})") from None
        hint = "; check the credentials and the bucket policy" if verdict == "access_denied" else ""
        raise ManifestError(f"manifest {row_error_for(e, uri, action, 1).message}{hint}") from None
