"""Manifests: file discovery (local, memory://, S3), schema checks, canonical columns."""

from __future__ import annotations

import json

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from helpers_io import write_manifest
from rayinpaint.io.errors import ManifestError, SettingsError
from rayinpaint.io.manifest import (CANONICAL_SCHEMA, ColumnMap, canonicalize, check_schema,
                                    list_manifest_files)


def test_column_map_parse():
    cm = ColumnMap.parse(" image = img_uri , mask=mask_uri,id=key ")
    assert cm.names == {"image": "img_uri", "mask": "mask_uri", "id": "key"}
    assert cm.user("prompt") == "prompt" and cm.user("image") == "img_uri"
    assert ColumnMap.from_dict({"seed": "s"}).user("seed") == "s"
    with pytest.raises(SettingsError, match="unknown canonical column"):
        ColumnMap.parse("picture=x")
    with pytest.raises(SettingsError, match="expected canonical=user"):
        ColumnMap.parse("image")
    with pytest.raises(SettingsError, match="mapped twice"):
        ColumnMap.parse("image=a,image=b")


def test_list_manifest_files_local(tmp_path):
    rows = [{"id": "a", "image": "a.png", "mask": "m.png"}]
    (tmp_path / "d" / "sub").mkdir(parents=True)
    write_manifest(tmp_path / "d" / "p1.parquet", rows)
    write_manifest(tmp_path / "d" / "sub" / "p2.parquet", rows)
    write_manifest(tmp_path / "d" / "_tmp.parquet", rows)       # skipped (marker-like)
    (tmp_path / "d" / "_SUCCESS").write_text("")
    (tmp_path / "d" / "notes.txt").write_text("x")
    folder = list_manifest_files(str(tmp_path / "d"))
    assert folder == [str(tmp_path / "d" / "p1.parquet"), str(tmp_path / "d" / "sub" / "p2.parquet")]
    # an explicit glob takes what it matches, markers included
    assert list_manifest_files(str(tmp_path / "d" / "p*.parquet")) == [str(tmp_path / "d" / "p1.parquet")]
    assert sorted(list_manifest_files(str(tmp_path / "d" / "*.parquet"))) == \
        [str(tmp_path / "d" / "_tmp.parquet"), str(tmp_path / "d" / "p1.parquet")]
    single = str(tmp_path / "d" / "p1.parquet")
    assert list_manifest_files([single, single]) == [single, single]
    with pytest.raises(ManifestError, match="not found"):
        list_manifest_files(str(tmp_path / "missing.parquet"))
    with pytest.raises(ManifestError, match="matches no files"):
        list_manifest_files(str(tmp_path / "d" / "*.nothing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ManifestError, match="no .parquet files"):
        list_manifest_files(str(tmp_path / "empty"))


def test_list_manifest_files_memory_and_s3(memfs_root, s3_bucket):
    fs = fsspec.filesystem("memory")
    base = memfs_root[len("memory://"):]
    write_manifest(f"{base}/m/a.parquet", [{"id": "x"}], fs=fs)
    write_manifest(f"{base}/m/b.parquet", [{"id": "y"}], fs=fs)
    got = list_manifest_files(memfs_root + "/m")
    assert [g.rsplit("/", 1)[1] for g in got] == ["a.parquet", "b.parquet"]
    assert all(g.startswith("memory://") for g in got)

    bucket, opts = s3_bucket
    s3 = fsspec.filesystem("s3", **opts.fsspec_kwargs("s3"))
    write_manifest(f"{bucket}/man/part-0.parquet", [{"id": "x"}], fs=s3)
    write_manifest(f"{bucket}/man/part-1.parquet", [{"id": "y"}], fs=s3)
    assert list_manifest_files(f"s3://{bucket}/man", opts) == \
        [f"s3://{bucket}/man/part-0.parquet", f"s3://{bucket}/man/part-1.parquet"]
    assert list_manifest_files(f"s3://{bucket}/man/part-1*", opts) == [f"s3://{bucket}/man/part-1.parquet"]


@pytest.mark.parametrize("schema, cmap, message", [
    (pa.schema([("image", pa.string()), ("mask", pa.string())]), None, r"required column 'id' \(id\) is missing"),
    (pa.schema([("id", pa.string()), ("mask", pa.string())]), None, r"required column 'image'"),
    (pa.schema([("id", pa.string()), ("image", pa.string())]), None, r"no mask column"),
    (pa.schema([("id", pa.float64()), ("image", pa.string()), ("mask", pa.string())]), None,
     r"column 'id' \(id\) has type double; expected string or integer"),
    (pa.schema([("id", pa.string()), ("image", pa.int64()), ("mask", pa.string())]), None,
     r"column 'image' \(image\) has type int64"),
    (pa.schema([("id", pa.string()), ("image", pa.string()), ("boxes", pa.list_(pa.string()))]), None,
     r"column 'boxes' \(boxes\) has type list<item: string>"),
    (pa.schema([("id", pa.string()), ("image", pa.string()), ("mask", pa.string()), ("seed", pa.string())]),
     None, r"column 'seed' \(seed\) has type string; expected integer"),
    (pa.schema([("id", pa.string()), ("image", pa.string()), ("mask", pa.string()), ("prompt", pa.int32())]),
     None, r"column 'prompt' \(prompt\) has type int32"),
    (pa.schema([("id", pa.string()), ("image", pa.string()), ("mask", pa.string())]),
     ColumnMap.parse("image=img_uri"), r"column 'img_uri' \(mapped to image\) is not in the manifest"),
])
def test_check_schema_errors(schema, cmap, message):
    with pytest.raises(ManifestError, match=message):
        check_schema(schema, cmap)


def test_check_schema_accepts_variants():
    check_schema(pa.schema([("key", pa.int64()), ("img", pa.large_binary()),
                            ("rle", pa.struct([("size", pa.list_(pa.int32())), ("counts", pa.string())])),
                            ("seed", pa.int32())]),
                 ColumnMap.parse("id=key,image=img,mask_rle=rle"))
    check_schema(pa.schema([("id", pa.dictionary(pa.int32(), pa.string())), ("image", pa.string()),
                            ("boxes", pa.list_(pa.list_(pa.int64(), 4)))]))


def _user_table(n=7):
    return pa.table({
        "key": pa.array(list(range(100, 100 + n)), pa.int64()),
        "img": [f"imgs/{i}.png" if i % 3 else f"s3://other/{i}.png" for i in range(n)],
        "m": pa.array([b"MASK%d" % i if i % 2 else None for i in range(n)], pa.binary()),
        "bx": pa.array([[[1, 2, 3, 4]] if i % 2 == 0 else None for i in range(n)],
                       pa.list_(pa.list_(pa.int32()))),
        "rle": pa.array([{"size": [2, 2], "counts": [1, 2, 1]} if i == 3 else None for i in range(n)],
                        pa.struct([("size", pa.list_(pa.int64())), ("counts", pa.list_(pa.int64()))])),
        "prompt": [None if i == 1 else f"p{i}" for i in range(n)],
        "path": ["bucket/man/part-0.parquet"] * (n - 2) + ["bucket/other/part-1.parquet"] * 2,
    })


def test_canonicalize_maps_types_and_resolves_relative_uris():
    cm = ColumnMap.parse("id=key,image=img,mask=m,boxes=bx,mask_rle=rle")
    out = canonicalize(_user_table(), cm, "path", protocol="s3")
    assert out.schema == CANONICAL_SCHEMA
    rows = out.to_pylist()
    assert rows[0]["id"] == "100"
    assert rows[1]["image_uri"] == "s3://bucket/man/imgs/1.png"
    assert rows[0]["image_uri"] == "s3://other/0.png"            # absolute stays absolute
    assert rows[5]["image_uri"] == "s3://bucket/other/imgs/5.png"  # each row its own manifest
    assert rows[1]["mask_bytes"] == b"MASK1" and rows[0]["mask_bytes"] is None
    assert rows[0]["boxes"] == [[1.0, 2.0, 3.0, 4.0]]
    assert json.loads(rows[3]["mask_rle"]) == {"size": [2, 2], "counts": [1, 2, 1]}
    assert rows[1]["prompt"] is None and rows[2]["prompt"] == "p2"
    assert rows[0]["negative_prompt"] is None and rows[0]["seed"] is None
    assert rows[0]["manifest"] == "s3://bucket/man/part-0.parquet"


def test_canonicalize_is_batch_independent():
    cm = ColumnMap.parse("id=key,image=img,mask=m,boxes=bx,mask_rle=rle")
    t = _user_table(7)
    whole = canonicalize(t, cm, "path", protocol="s3")
    parts = [canonicalize(t.slice(a, b - a), cm, "path", protocol="s3") for a, b in ((0, 1), (1, 4), (4, 7))]
    assert pa.concat_tables(parts).equals(whole)


def test_canonicalize_local_manifest_and_binary_image(tmp_path):
    t = pa.table({"id": ["a"], "image": pa.array([b"\x89PNG..."], pa.large_binary()),
                  "mask": ["masks/a.png"], "path": [str(tmp_path / "m.parquet")]})
    row = canonicalize(t).to_pylist()[0]
    assert row["image_bytes"] == b"\x89PNG..." and row["image_uri"] is None
    assert row["mask_uri"] == str(tmp_path / "masks" / "a.png")
    # without a source column, base_dir applies; without either, refs stay as written
    t2 = t.drop_columns(["path"])
    assert canonicalize(t2, base_dir="/base").to_pylist()[0]["mask_uri"] == "/base/masks/a.png"
    assert canonicalize(t2).to_pylist()[0]["mask_uri"] == "masks/a.png"


def test_canonicalize_string_rle_and_schema_error():
    t = pa.table({"id": ["a"], "image": ["x.png"], "mask_rle": ['{"size":[1,1],"counts":[0,1]}']})
    assert canonicalize(t, source_column=None).to_pylist()[0]["mask_rle"] == '{"size":[1,1],"counts":[0,1]}'
    with pytest.raises(ManifestError, match="'image'"):
        canonicalize(pa.table({"id": ["a"], "image": [1.5], "mask": ["m"]}))


def test_read_parquet_roundtrip_through_canonicalize(tmp_path):
    rows = [{"id": f"r{i}", "img_uri": f"{i}.png", "mask_uri": f"m{i}.png", "seed": i} for i in range(5)]
    write_manifest(tmp_path / "m.parquet", rows)
    t = pq.read_table(tmp_path / "m.parquet")
    t = t.append_column("path", pa.array([str(tmp_path / "m.parquet")] * t.num_rows))
    out = canonicalize(t, ColumnMap.parse("image=img_uri,mask=mask_uri")).to_pylist()
    assert [r["image_uri"] for r in out] == [str(tmp_path / f"{i}.png") for i in range(5)]
    assert [r["seed"] for r in out] == [0, 1, 2, 3, 4]
