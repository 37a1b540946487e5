"""channels_last without surprises: building an Inpainter re-lays out the model's conv weights (their data_ptr
changes), so it must not do so under another Inpainter's captured CUDA graph, which reads them at fixed addresses.
On CPU no graph is captured: a step carrying a capture marker stands in for one (the GPU test captures for real)."""

from __future__ import annotations

import gc
from types import SimpleNamespace

import torch

from rayinpaint.model import Inpainter, load_model
from rayinpaint.model.speed import vae_channels_last, weights_channels_last


def conv(m) -> torch.Tensor:
    return m.unet.input_blocks[0][0].weight


def test_an_inpainter_with_another_layout_moves_the_weights_when_no_graph_reads_them():
    m = load_model("random:tiny")
    a = Inpainter(m, speed=dict(channels_last=True))
    ptr = conv(m).data_ptr()
    assert weights_channels_last(m.unet) and a.speed.channels_last
    b = Inpainter(m, speed=dict(channels_last=False))
    assert conv(m).data_ptr() != ptr  # measured: the re-layout moves the weights
    assert weights_channels_last(m.unet) is False and b.speed.channels_last is False
    assert weights_channels_last(m.vae) is False


def test_weights_a_captured_graph_reads_stay_where_they_are():
    m = load_model("random:tiny")
    a = Inpainter(m, speed=dict(channels_last=True))
    ptr = conv(m).data_ptr()
    a._steps[(1, 8, 8)] = SimpleNamespace(_cuda_graph=object())  # a captured graph over these weights
    b = Inpainter(m, speed=dict(channels_last=False))
    assert conv(m).data_ptr() == ptr and weights_channels_last(m.unet)
    assert b.speed.channels_last is True  # what b really uses, recorded as such
    # Same layout asked again: nothing moves either.
    Inpainter(m, speed=dict(channels_last=True))
    assert conv(m).data_ptr() == ptr
    # Once the graph is gone, the layout can change again.
    del a
    gc.collect()
    c = Inpainter(m, speed=dict(channels_last=False))
    assert conv(m).data_ptr() != ptr and c.speed.channels_last is False


def test_the_vae_follows_the_unet_on_cpu_and_stays_contiguous_on_cuda():
    """CUDA's GroupNorm is contiguous-only (each of the VAE's GroupNorms would copy twice in channels_last)."""
    assert vae_channels_last(True, "cpu") and not vae_channels_last(False, "cpu")
    assert not vae_channels_last(True, "cuda") and not vae_channels_last(False, "cuda")
    m = load_model("random:tiny")
    Inpainter(m, speed=dict(channels_last=True))
    assert weights_channels_last(m.unet) and weights_channels_last(m.vae)
