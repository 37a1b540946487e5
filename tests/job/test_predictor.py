"""The model actor's batch handling, without Ray: fixed shapes, OOM splitting, one bad row isolated."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from rayinpaint.jobs.predictor import InpaintPredictor, ModelSettings

R = 64


class FakeInpainter:
    """Records each call's batch size; fails like CUDA when a batch is larger than `fits`; the row of `nan_seed`
    comes back not finite."""

    def __init__(self, fits: int, bad_seed: int | None = None, nan_seed: int | None = None):
        self.fits, self.bad_seed, self.nan_seed, self.calls = fits, bad_seed, nan_seed, []

    def generate(self, images, masks, prompts, negs, seeds):
        self.calls.append(len(seeds))
        if len(seeds) > self.fits:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        if self.bad_seed in seeds:
            raise RuntimeError("kernel failure (simulated)")
        return (np.stack([np.full((images.shape[1],) * 2 + (3,), s % 256, np.uint8) for s in seeds]),
                np.array([s != self.nan_seed for s in seeds]))


@pytest.fixture()
def predictor():
    return InpaintPredictor(ModelSettings("random:tiny", dtype="float32", sampler="ddim", steps=1, guidance=1.0,
                                          strength=1.0, eta=0.0, karras=False, resolution=R, pad_to=4))


def batch(n: int, statuses=None, regions=None) -> pa.Table:
    """n prepared rows (seeds 10, 11, ...); `regions`: per row, the model sides of its regions (default one
    region of R each). Region k of the row of seed s has seed s + 100 * k."""
    statuses = statuses or ["ready"] * n
    regions = regions or [[R]] * n
    sides = [r if st == "ready" else [] for r, st in zip(regions, statuses)]
    return pa.table({
        "id": [f"r{i}" for i in range(n)], "status": statuses, "error_kind": [None] * n, "error": [None] * n,
        "seed": list(range(10, 10 + n)), "prompt": ["p"] * n, "negative_prompt": [""] * n,
        "model_image": [[bytes(r * r * 3) for r in rs] for rs in sides],
        "model_mask": [[bytes(r * r) for r in rs] for rs in sides],
        "windows": [[[0, 0, r, r] for r in rs] for rs in sides],
        "region_res": sides,
        "region_seeds": [[10 + i + 100 * k for k in range(len(rs))] for i, rs in enumerate(sides)],
    })


def assert_only_the_middle_row_failed(out: pa.Table, words: str) -> None:
    """Of three ready rows (seeds 10, 11, 12), the middle one is a model_error row naming `words`; the others ran."""
    assert out.column("status").to_pylist() == ["ready", "error", "ready"]
    assert out.column("error_kind").to_pylist()[1] == "model_error"
    assert words in out.column("error").to_pylist()[1]
    assert out.column("result").to_pylist()[1] is None
    assert np.frombuffer(out.column("result").to_pylist()[2][0], np.uint8)[0] == 12


def test_short_batches_are_padded_to_the_fixed_shape(predictor):
    predictor.inpainter = fake = FakeInpainter(fits=8)
    out = predictor(batch(3, ["ready", "error", "ready"]))
    assert fake.calls == [4]  # two ready rows, padded to the batch shape of 4
    res = out.column("result").to_pylist()
    assert res[1] is None and np.frombuffer(res[2][0], np.uint8)[0] == 12
    assert "model_image" not in out.column_names


def test_out_of_memory_splits_the_batch_and_keeps_the_smaller_shape(predictor):
    predictor.inpainter = fake = FakeInpainter(fits=2)
    out = predictor(batch(4))
    assert fake.calls == [4, 2, 2]
    assert [np.frombuffer(r[0], np.uint8)[0] for r in out.column("result").to_pylist()] == [10, 11, 12, 13]
    assert out.column("status").to_pylist() == ["ready"] * 4
    fake.calls.clear()
    predictor(batch(4))
    assert fake.calls == [2, 2]  # no second failure at 4


def test_a_failing_row_becomes_an_error_row_and_the_others_finish(predictor):
    predictor.inpainter = FakeInpainter(fits=8, bad_seed=11)
    assert_only_the_middle_row_failed(predictor(batch(3)), "kernel failure")


def test_warmup_failure_falls_back_to_the_eager_step(predictor):
    """A compile or CUDA-graph failure at warm-up (as on a machine whose compiler toolchain is broken) must not
    fail the actor: it retries once with compile and cuda_graph off and keeps the other switches."""
    calls, speeds = [], []

    def warmup(batch, res):
        calls.append((batch, res))
        if len(calls) == 1:
            raise RuntimeError("inductor: compilation failed (simulated)")
        return {"seconds": 0.5}

    predictor.inpainter.warmup = warmup
    predictor.inpainter.set_speed = lambda s: speeds.append(s)
    predictor._warmup({"sdpa": "math", "channels_last": True})
    assert calls == [(4, R), (4, R)]
    assert speeds == [{"sdpa": "math", "channels_last": True, "compile": False, "cuda_graph": False}]


def test_warmup_out_of_memory_halves_the_batch_until_it_fits(predictor):
    sizes = []

    def warmup(batch, res):
        sizes.append(batch)
        if batch > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return {"seconds": 0.1}

    predictor.inpainter.warmup = warmup
    predictor._warmup({})
    assert sizes == [4, 2, 1] and predictor.pad_to == 1
    sizes.clear()
    predictor.inpainter.warmup = lambda b, r: (_ for _ in ()).throw(torch.cuda.OutOfMemoryError("still (simulated)"))
    with pytest.raises(torch.cuda.OutOfMemoryError):
        predictor._warmup({})  # nothing smaller left to try


def test_the_switches_in_effect_are_recorded_per_row_and_per_actor_in_the_tally(predictor):
    from rayinpaint.jobs.tally import RunTally

    out = predictor(batch(2))
    speed = out.column("speed").to_pylist()
    assert speed[0] == speed[1] == predictor.speed_text()
    assert "compile=0" in speed[0] and "cuda_graph=0" in speed[0] and "fused_cfg=1" in speed[0]  # CPU: resolved
    tally = RunTally(preview_count=0)
    tally.add(out.select(["id", "status", "error_kind", "error", "actor", "speed"]))
    assert tally.this_run()["speed_by_actor"] == {predictor.actor: speed[0]}


def test_strict_speed_fails_the_actor_not_the_rows(predictor):
    """With strict_speed a fast path that fails its check raises out of the batch instead of erroring its rows."""
    from rayinpaint.model.inpainter import SpeedCheckError

    class Refusing(FakeInpainter):
        def generate(self, *a):
            raise SpeedCheckError("the compiled step is off the eager one (simulated)")

    predictor.inpainter = Refusing(fits=8)
    with pytest.raises(SpeedCheckError):
        predictor(batch(2))


def test_out_of_memory_releases_the_failed_batch_before_the_retry(predictor):
    """What the failed call held (here one object in its frame, as activations are) is gone when the smaller
    batches run: the retry does not happen inside the `except` whose traceback keeps that frame alive."""
    import weakref

    class Held:
        pass

    seen = []

    class HoldingInpainter(FakeInpainter):
        def generate(self, images, masks, prompts, negs, seeds):
            if len(seeds) > self.fits:
                held = Held()  # noqa: F841 - alive in this frame while the error propagates
                self.ref = weakref.ref(held)
            elif hasattr(self, "ref"):
                seen.append(self.ref() is None)
            return super().generate(images, masks, prompts, negs, seeds)

    predictor.inpainter = fake = HoldingInpainter(fits=2)
    predictor(batch(4))
    assert fake.calls == [4, 2, 2] and seen == [True, True]


def test_a_row_whose_output_is_not_finite_becomes_an_error_row(predictor):
    predictor.inpainter = FakeInpainter(fits=8, nan_seed=11)
    assert_only_the_middle_row_failed(predictor(batch(3)), "not finite")


def test_the_inpainter_flags_rows_that_are_not_finite():
    """The real Inpainter: a UNet whose output is NaN for the second row only gives that row finite=False."""
    from rayinpaint.model import Inpainter, load_model

    m = load_model("random:tiny")
    forward = m.unet.forward

    def nan_second_row(x, t, ctx):
        out = forward(x, t, ctx).clone()
        out[1::2] = float("nan")  # row 1 of each CFG half: batch row 1
        return out

    m.unet.forward = nan_second_row
    inp = Inpainter(m, sampler="ddim", steps=2, speed=dict(compile=False, cuda_graph=False))
    images = np.zeros((2, R, R, 3), np.uint8)
    masks = np.full((2, R, R), 255, np.uint8)
    out, finite = inp.generate(images, masks, ["a", "b"], None, [1, 2])
    assert finite.tolist() == [True, False] and out.shape == (2, R, R, 3)


def test_regions_of_different_rows_share_fixed_shape_batches(predictor):
    """Rows of 3, 0 (unchanged) and 2 regions: 5 regions run as batches of 4 + 1 (padded to 4), in row order,
    each region with its own seed; each row gets its regions' outputs back in region order."""
    predictor.inpainter = fake = FakeInpainter(fits=8)
    out = predictor(batch(3, ["ready", "unchanged", "ready"], regions=[[R] * 3, [], [R] * 2]))
    assert fake.calls == [4, 4]
    res = out.column("result").to_pylist()
    assert [np.frombuffer(b, np.uint8)[0] for b in res[0]] == [10, 110, 210]
    assert res[1] is None and [np.frombuffer(b, np.uint8)[0] for b in res[2]] == [12, 112]
    assert out.column("status").to_pylist() == ["ready", "unchanged", "ready"]


def test_regions_of_another_side_run_in_batches_of_their_own(predictor):
    """--max-resolution: a 2R region runs in its own batch of the fixed size, never mixed with R regions."""
    shapes = []

    class Recording(FakeInpainter):
        def generate(self, images, masks, prompts, negs, seeds):
            shapes.append((len(seeds), images.shape[1]))
            return super().generate(images, masks, prompts, negs, seeds)

    predictor.inpainter = Recording(fits=8)
    out = predictor(batch(2, regions=[[R, 2 * R], [R]]))
    assert shapes == [(4, R), (4, 2 * R)]
    res = out.column("result").to_pylist()
    assert [len(b) for b in res[0]] == [R * R * 3, 4 * R * R * 3] and [len(b) for b in res[1]] == [R * R * 3]


def test_a_failing_region_makes_its_row_an_error_naming_the_region(predictor):
    predictor.inpainter = FakeInpainter(fits=8, nan_seed=111)  # region 2 of the row of seed 11
    out = predictor(batch(3, regions=[[R], [R] * 3, [R]]))
    assert out.column("status").to_pylist() == ["ready", "error", "ready"]
    msg = out.column("error").to_pylist()[1]
    assert msg.startswith("region 2 of 3 (window [0, 0, 64, 64]): ") and "not finite" in msg
    assert out.column("result").to_pylist()[1] is None and len(out.column("result").to_pylist()[2]) == 1
