"""Mistakes on the command line are one line, with the fix: did-you-mean for option names and choices, the
--columns mapping for a missing column, sampler aliases, an --output that is a file."""

from __future__ import annotations

import pyarrow as pa
import pytest

from rayinpaint.io.errors import ManifestError, SettingsError
from rayinpaint.io.manifest import check_schema
from rayinpaint.jobs.cli import main
from rayinpaint.jobs.config import JobConfig, build_config


def one_error_line(capsys, argv) -> str:
    with pytest.raises(SystemExit) as ei:
        main(argv)
    assert ei.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "usage:" not in err, err
    return err.strip()


def test_typos_are_one_line_with_did_you_mean(capsys):
    base = ["run", "--manifest", "m.parquet", "--output", "o"]
    line = one_error_line(capsys, base + ["--stpes", "3"])
    assert line.startswith("rayinpaint: error: unrecognized arguments: --stpes (did you mean --steps?)")
    assert "(did you mean jpeg?)" in one_error_line(capsys, base + ["--format", "jpgg"])
    assert "(did you mean bfloat16?)" in one_error_line(capsys, base + ["--dtype", "bf16"])
    assert "(did you mean run?)" in one_error_line(capsys, ["rnu"])
    # A bad sampler is checked with the settings (aliases are resolved there): one line, exit 2, a suggestion.
    assert main(base + ["--sampler", "eulr"]) == 2
    assert capsys.readouterr().err.strip().endswith("got 'eulr' (did you mean euler?)")


def test_sampler_accepts_diffusers_scheduler_class_names():
    for alias, name in (("DPMSolverMultistepScheduler", "dpmpp_2m"), ("EulerDiscreteScheduler", "euler"),
                        ("EulerAncestralDiscreteScheduler", "euler_a"), ("DDIMScheduler", "ddim"), ("euler", "euler")):
        assert build_config({"manifest": ("m",), "output": "o", "sampler": alias}).sampler == name
    assert JobConfig(manifest=("m",), output="o", sampler="ddimscheduler").sampler == "ddim"  # Python API too


def test_config_file_typo_suggests_the_option(tmp_path):
    f = tmp_path / "job.yaml"
    f.write_text("stpes: 3\n")
    with pytest.raises(SettingsError, match=r"unknown option 'stpes' .*\(did you mean steps\?\)"):
        build_config({"manifest": ("m",), "output": "o"}, str(f))


def test_missing_column_suggests_the_columns_mapping():
    schema = pa.schema([("id", pa.string()), ("img_uri", pa.string()), ("mask_uri", pa.string())])
    with pytest.raises(ManifestError, match=r"map yours with --columns image=img_uri"):
        check_schema(schema)
    schema = pa.schema([("id", pa.string()), ("image", pa.string()), ("segmentation", pa.string())])
    with pytest.raises(ManifestError, match=r"no mask column.*--columns mask=<your column>"):
        check_schema(schema)


def test_output_that_is_a_file_says_so(tmp_path, capsys):
    from rayinpaint.bench.demo import make_dataset

    manifest = make_dataset(str(tmp_path / "in"), rows=1)
    target = tmp_path / "results.txt"
    target.write_text("not a folder")
    assert main(["run", "--manifest", manifest, "--output", str(target), "--weights", "random:tiny"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (f"rayinpaint: error: --output {target} is a file; --output names a folder (or an "
                       f"object-store prefix) that results/, images/ and _SUMMARY.json are written under")
    assert "_write_probe" not in "\n".join(err) and target.read_text() == "not a folder"
