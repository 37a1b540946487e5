"""The detector's options (--mask-from, --mask-combine, --detector-weights, --detector-threshold) are checked before
any work, each bad value one line naming the option; a missing `[detect]` extra stops the command with one line
saying what to install (exit 2), before Ray starts or the output is touched; the detector is part of the settings
fingerprint only when one is used."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rayinpaint.detect import spec
from rayinpaint.io.errors import SettingsError
from rayinpaint.jobs.cli import main
from rayinpaint.jobs.config import JobConfig, build_config
from rayinpaint.ledger.fingerprint import pixel_settings

BASE = {"manifest": ["m.parquet"], "output": "out", "weights": "random:tiny"}


@pytest.mark.parametrize("options, message", [
    ({"mask_combine": "union"}, "--mask-combine, --detector-weights and --detector-threshold apply with --mask-from"),
    ({"detector_threshold": 0.3}, "apply with --mask-from only"),
    ({"mask_from": "text", "mask_combine": "both"}, "--mask-combine must be one of missing, union, replace"),
    ({"mask_from": "faces"}, "--mask-from: expected 'text' or 'prompt:<what to find>', got 'faces'"),
    ({"mask_from": "prompt:  "}, "--mask-from prompt: needs the text to find"),
    ({"mask_from": "prompt:logo"}, "--mask-from prompt: needs --detector-weights"),
    ({"mask_from": "text", "detector_threshold": 1.5}, "--detector-threshold: expected a number from 0 to 1"),
])
def test_bad_detector_options_are_one_line_naming_the_option(options, message):
    with pytest.raises(SettingsError) as e:
        build_config({**BASE, **options})
    assert message in str(e.value) and "\n" not in str(e.value)


def test_the_cli_names_the_extra_to_install_before_ray_or_the_output(tmp_path, monkeypatch, capsys, no_ray):
    pq.write_table(pa.table({"id": ["a"], "image": ["a.png"]}), str(tmp_path / "m.parquet"))
    monkeypatch.setattr(spec, "_absent", lambda name: name == "rapidocr")  # as where `[detect]` is not installed
    out = tmp_path / "out"
    code = main(["run", "--manifest", str(tmp_path / "m.parquet"), "--output", str(out), "--weights", "random:tiny",
                 "--mask-from", "text"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err == ['rayinpaint: error: --mask-from text: text detection needs rapidocr, not installed; install it '
                   'with: pip install "ray-inpaint[detect]"']
    assert not out.exists()
    import ray

    assert not ray.is_initialized()


def test_the_detector_is_part_of_the_fingerprint_only_when_used():
    plain = pixel_settings(JobConfig(**BASE), "m")
    assert "detector" not in plain and "mask_combine" not in plain  # outputs made before detectors keep theirs
    text = pixel_settings(JobConfig(**BASE, mask_from="text"), "m")
    assert text["mask_combine"] == "missing" and text["detector"]["kind"] == "text"
    union = pixel_settings(JobConfig(**BASE, mask_from="text", mask_combine="union"), "m")
    lower = pixel_settings(JobConfig(**BASE, mask_from="text", detector_threshold=0.3), "m")
    assert len({str(s) for s in (plain, text, union, lower)}) == 4


def test_unreadable_detector_weights_are_one_line_before_ray_or_the_output(tmp_path, capsys, no_ray):
    pq.write_table(pa.table({"id": ["a"], "image": ["a.png"]}), str(tmp_path / "m.parquet"))
    out, missing = tmp_path / "out", tmp_path / "no-such-clipseg"
    code = main(["run", "--manifest", str(tmp_path / "m.parquet"), "--output", str(out), "--weights", "random:tiny",
                 "--mask-from", "prompt:logo", "--detector-weights", str(missing)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"rayinpaint: error: --detector-weights {missing}: ") and "no such folder" in err[0]
    assert not out.exists()
