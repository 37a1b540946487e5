"""A weights file of another format (a Parquet file, a checkpoint that needs more than tensors, a truncated file)
is one line and exit 2 from the driver's pre-flight, before Ray starts; a good checkpoint passes, on local disk and
through the storage layer (memory://), reading the pickle part only."""

from __future__ import annotations

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from helpers_model import TouchWhenUnpickled
from rayinpaint.jobs.cli import main
from rayinpaint.jobs.config import JobConfig
from rayinpaint.jobs.preflight import WeightsUnavailable, check_weights
from rayinpaint.model.checkpoint import expected_shapes, PREFIXES
from rayinpaint.model.config import get_config


class _NotATensor:
    """A pickled object of a class: what a full training checkpoint holds besides its tensors."""


def tiny_state_dict() -> dict:
    """The tiny model's single-file layout, zero-filled (the shapes are what is checked)."""
    shapes = expected_shapes(get_config("tiny"))
    return {PREFIXES[c] + k: torch.zeros(s) for c, names in shapes.items() for k, s in names.items()}


def one_line(capsys, weights, tmp_path) -> str:
    code = main(["run", "--manifest", str(tmp_path / "m.parquet"), "--output", str(tmp_path / "o"),
                 "--weights", str(weights), "--model-config", "tiny"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_a_parquet_file_as_weights_is_one_line_before_ray(tmp_path, capsys, no_ray):
    import ray

    weights = tmp_path / "weights.parquet"
    pq.write_table(pa.table({"a": [1, 2]}), weights)
    line = one_line(capsys, weights, tmp_path)
    assert line.startswith("rayinpaint: error: --weights:") and "is a Parquet file" in line
    named = tmp_path / "named.safetensors"  # the suffix does not matter: the first bytes do
    named.write_bytes(weights.read_bytes())
    assert "is a Parquet file, not .safetensors weights" in one_line(capsys, named, tmp_path)
    assert not ray.is_initialized()
    assert not (tmp_path / "o" / "results").exists()


def test_a_checkpoint_that_is_not_weights_only_is_one_line(tmp_path, capsys):
    ckpt = tmp_path / "full.ckpt"
    torch.save({"state_dict": tiny_state_dict(), "callbacks": _NotATensor()}, ckpt)
    line = one_line(capsys, ckpt, tmp_path)
    assert "refused to unpickle" in line and "_NotATensor" in line and "weights_only=False" not in line
    parquet = tmp_path / "table.ckpt"
    pq.write_table(pa.table({"a": [1]}), parquet)
    assert "is a Parquet file, not torch.save weights" in one_line(capsys, parquet, tmp_path)
    truncated = tmp_path / "cut.ckpt"
    torch.save(tiny_state_dict(), truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    assert "cannot read the checkpoint's zip directory" in one_line(capsys, truncated, tmp_path)


def test_a_weights_only_checkpoint_passes_and_its_shapes_are_checked(tmp_path, memfs_root):
    sd = tiny_state_dict()
    fs = fsspec.filesystem("memory")
    good = f"{memfs_root}/w/good.ckpt"
    with fs.open(good[len("memory://"):], "wb") as f:
        torch.save({"state_dict": sd}, f)
    cfg = JobConfig(manifest=("m",), output=str(tmp_path / "o"), weights=good, model_config="tiny")
    check_weights(cfg, cfg.storage())  # passes: tensors and containers only, every name and shape right
    name = next(iter(sd))
    sd[name] = torch.zeros(3)
    bad = tmp_path / "shape.pt"
    torch.save(sd, bad)
    cfg = JobConfig(manifest=("m",), output=str(tmp_path / "o"), weights=str(bad), model_config="tiny")
    with pytest.raises(WeightsUnavailable, match="wrong shapes"):
        check_weights(cfg, cfg.storage())


def test_a_checkpoint_check_reads_the_pickle_part_not_the_tensors(tmp_path):
    """A 16 MB tensor in the checkpoint: the check reads a small part of the file."""
    from rayinpaint.model.fileformat import checkpoint_shapes

    path = tmp_path / "big.ckpt"
    torch.save({"x": torch.zeros(4 << 20)}, path)
    read = []

    class Counting(fsspec.implementations.local.LocalFileOpener):
        def read(self, n=-1):
            out = super().read(n)
            read.append(len(out))
            return out

    with Counting(str(path), "rb") as f:
        assert checkpoint_shapes(f, "big.ckpt") == {"x": (4 << 20,)}
    assert 0 < sum(read) < 64 << 10


def test_torchs_legacy_format_is_checked_and_a_bare_pickle_is_one_line_before_ray(tmp_path, capsys, no_ray):
    """torch.save(..., _use_new_zipfile_serialization=False) writes pickles, not a zip: its shapes are read from the
    pickles before the tensors' bytes; any other pickle (one that would run code when loaded included) is refused
    by the driver, not by a worker after Ray started."""
    import pickle

    import ray

    from rayinpaint.model.fileformat import checkpoint_shapes

    legacy = tmp_path / "legacy.ckpt"
    torch.save({"state_dict": {"a": torch.zeros(3, 4), "b": torch.ones(2, dtype=torch.float16)}}, legacy,
               _use_new_zipfile_serialization=False)
    with open(legacy, "rb") as f:
        assert checkpoint_shapes(f, "legacy.ckpt") == {"a": (3, 4), "b": (2,)}
    sd = tiny_state_dict()
    sd[next(iter(sd))] = torch.zeros(3)
    torch.save(sd, legacy, _use_new_zipfile_serialization=False)
    assert "wrong shapes" in one_line(capsys, legacy, tmp_path)

    marker = tmp_path / "ran"
    evil = tmp_path / "evil.pkl.ckpt"
    evil.write_bytes(pickle.dumps(TouchWhenUnpickled(str(marker))))
    line = one_line(capsys, evil, tmp_path)
    assert "refused to unpickle" in line and not marker.exists()
    plain = tmp_path / "plain.ckpt"
    plain.write_bytes(pickle.dumps({"a": 1}, protocol=2))
    assert "is a pickle but not a torch checkpoint" in one_line(capsys, plain, tmp_path)
    assert not ray.is_initialized()

