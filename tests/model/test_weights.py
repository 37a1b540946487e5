"""Strict checkpoint loading, the diffusers-folder path, and the once-per-node download cache.

Checkpoints are written by the test from a random model, with exactly the real file's layout:
LDM-prefixed component tensors plus the documented unused entries (DDPM buffers, model_ema
scalars, the last text block, text_projection, logit_scale; docs/model.md §7.2).
"""
from __future__ import annotations

import csv
import hashlib
import multiprocessing as mp
import os
import pickle
import time
from pathlib import Path

import fsspec
import pytest
import torch
from fsspec.spec import AbstractFileSystem
from safetensors.torch import save_file

from helpers_model import TouchWhenUnpickled
from rayinpaint.model import (
    PRESETS,
    WeightsError,
    ldm_to_diffusers_unet,
    ldm_to_diffusers_vae,
    load_model,
    openclip_to_hf_text,
)
from rayinpaint.model.checkpoint import DDPM_BUFFERS, PREFIXES, is_ignored
from rayinpaint.model.sd2 import COMPONENTS, build_meta, single_file_state_dict

DATA = Path(__file__).resolve().parents[1] / "data"


# --------------------------------------------------------------------------- helpers


def ldm_checkpoint(m) -> dict[str, torch.Tensor]:
    """The single-file layout: prefixed component tensors plus the unused entries of the real file."""
    sd = {k: v.clone() for k, v in single_file_state_dict(m).items()}
    t = PREFIXES["text_encoder"]
    last = m.config.text.layers - 1
    g = torch.Generator().manual_seed(9)
    for k, v in m.text_encoder.state_dict().items():
        if k.startswith("transformer.resblocks.0."):
            sd[t + k.replace("resblocks.0.", f"resblocks.{last}.", 1)] = torch.randn(v.shape, generator=g)
    w = m.config.text.width
    sd[t + "text_projection"] = torch.randn(w, w, generator=g)
    sd[t + "logit_scale"] = torch.tensor(4.6052)
    for name in DDPM_BUFFERS:
        sd[name] = torch.rand(1000, generator=g)
    sd["model_ema.decay"] = torch.tensor(0.9999)
    sd["model_ema.num_updates"] = torch.tensor(123, dtype=torch.int32)
    return sd


def assert_same_weights(a, b) -> None:
    for c in COMPONENTS:
        sa, sb = getattr(a, c).state_dict(), getattr(b, c).state_dict()
        assert sa.keys() == sb.keys()
        for k in sa:
            assert torch.equal(sa[k], sb[k]), f"{c}.{k}"


@pytest.fixture(scope="module")
def tiny():
    return load_model("random:tiny:3")


@pytest.fixture(scope="module")
def tiny_file(tiny, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    save_file(ldm_checkpoint(tiny), str(path))
    return path


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    d = tmp_path / "cache"
    monkeypatch.setenv("RAYINPAINT_CACHE", str(d))
    return d


# --------------------------------------------------------------------------- random models


def test_random_models_are_seeded_and_non_trivial():
    a, b, c = load_model("random:tiny"), load_model("random:tiny:0"), load_model("random:tiny:7")
    assert_same_weights(a, b)
    assert a.sha256 == "random:tiny:0" and c.sha256 == "random:tiny:7" and c.source == "random:tiny:7"
    assert not torch.equal(a.unet.out[2].weight, c.unet.out[2].weight)
    for name, p in a.named_parameters():
        assert p.std() > 1e-3 and p.abs().min() >= 0 and p.abs().max() > 1e-3, name  # nothing left at zero/constant
        assert not p.requires_grad
    assert not a.training and a.scale_factor == 0.18215 and a.device == torch.device("cpu")


def test_bf16_load_casts_weights_and_runs(tiny_file):
    m32 = load_model(str(tiny_file), config="tiny")
    m16 = load_model(str(tiny_file), config="tiny", dtype=torch.bfloat16)
    assert m16.dtype == torch.bfloat16
    for k, v in m16.unet.state_dict().items():
        assert v.dtype == torch.bfloat16 and torch.equal(v, m32.unet.state_dict()[k].to(torch.bfloat16)), k
    x, t, ctx = torch.randn(1, 9, 8, 8), torch.tensor([500]), torch.randn(1, 77, 32)
    with torch.inference_mode():
        a, b = m32.unet(x, t, ctx), m16.unet(x, t, ctx).float()
    assert ((a - b).abs().max() / a.abs().max()) < 0.05


# --------------------------------------------------------------------------- single file


def test_single_file_loads_strictly_and_reports_sha256(tiny, tiny_file, cache):
    m = load_model(str(tiny_file), config=PRESETS["tiny"])
    assert_same_weights(m, tiny)
    assert m.sha256 == hashlib.sha256(tiny_file.read_bytes()).hexdigest()
    assert m.source == str(tiny_file)
    assert list((cache / "local-sha256").glob("*.sha256"))  # memoised for the next load
    again = load_model(str(tiny_file), config="tiny", sha256=m.sha256)
    assert again.sha256 == m.sha256
    with pytest.raises(WeightsError, match="sha256 mismatch"):
        load_model(str(tiny_file), config="tiny", sha256="0" * 64)


def test_full_config_expected_keys_equal_the_real_checkpoint_lists():
    """Every name and shape of the real 512-inpainting-ema file (tests/data/*.tsv) is either
    expected by our full-config model or one of the documented ignored entries, and vice versa."""
    rows = {}
    for name in ("ldm_unet_keys.tsv", "ldm_vae_keys.tsv", "openclip_text_keys.tsv"):
        with open(DATA / name) as f:
            for row in csv.reader(f, delimiter="\t"):
                rows[row[0]] = tuple(int(x) for x in row[1].strip("[]").split(",") if x.strip())
    assert len(rows) == 686 + 248 + 294
    cfg = PRESETS["sd2-inpainting"]
    expected = build_meta(cfg).expected_shapes()
    flat = {PREFIXES[c] + k: s for c, d in expected.items() for k, s in d.items()}
    ignored = {k for k in rows if is_ignored(k, cfg.text)}
    assert {k for k in ignored} == {k for k in rows if ".resblocks.23." in k or k.endswith(("text_projection", "logit_scale"))}
    assert len(ignored) == 12 + 2  # one resblock (12 tensors), text_projection, logit_scale
    assert flat == {k: s for k, s in rows.items() if k not in ignored}


def _save_variant(tiny, tmp_path: Path, edit) -> Path:
    sd = ldm_checkpoint(tiny)
    edit(sd)
    path = tmp_path / "bad.safetensors"
    save_file(sd, str(path))
    return path


def test_missing_tensor_is_named(tiny, tmp_path, cache):
    name = "model.diffusion_model.output_blocks.3.1.proj_out.bias"
    path = _save_variant(tiny, tmp_path, lambda sd: sd.pop(name))
    with pytest.raises(WeightsError, match="missing tensors 1: " + name.replace(".", r"\.")):
        load_model(str(path), config="tiny")


def test_unexpected_tensor_is_named(tiny, tmp_path, cache):
    def edit(sd):
        sd["first_stage_model.encoder.mid.attn_2.q.weight"] = torch.zeros(2)
        sd["alphas_cumprod_next"] = torch.zeros(1000)  # not a documented DDPM buffer

    path = _save_variant(tiny, tmp_path, edit)
    with pytest.raises(WeightsError, match="unexpected tensors 2: alphas_cumprod_next, first_stage_model.encoder.mid.attn_2.q.weight"):
        load_model(str(path), config="tiny")


def test_wrong_shape_is_named(tiny, tmp_path, cache):
    name = "model.diffusion_model.input_blocks.0.0.weight"
    path = _save_variant(tiny, tmp_path, lambda sd: sd.__setitem__(name, torch.zeros(32, 4, 3, 3)))
    with pytest.raises(WeightsError, match=r"wrong shapes 1: .*input_blocks\.0\.0\.weight \(file \[32, 4, 3, 3\], model \[32, 9, 3, 3\]\)"):
        load_model(str(path), config="tiny")


def test_many_problems_are_listed_with_a_count(tiny, tmp_path, cache):
    path = _save_variant(tiny, tmp_path, lambda sd: [sd.pop(k) for k in list(sd) if k.startswith("first_stage_model.decoder.")])
    with pytest.raises(WeightsError, match=r"missing tensors \d+: .* and \d+ more"):
        load_model(str(path), config="tiny")


def test_truncated_file_names_the_file(tiny_file, tmp_path, cache):
    data = tiny_file.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="cut.safetensors.*truncated or corrupt"):
        load_model(str(cut), config="tiny")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\xff" * 64)
    with pytest.raises(WeightsError, match="junk.safetensors"):
        load_model(str(junk), config="tiny")


def test_ckpt_loads_state_dict_safely(tiny, tmp_path, cache):
    path = tmp_path / "tiny.ckpt"
    torch.save({"state_dict": ldm_checkpoint(tiny), "global_step": 200000}, path)
    assert_same_weights(load_model(str(path), config="tiny"), tiny)


@pytest.mark.parametrize("zip_format", [True, False])
def test_malicious_pickle_is_refused_without_running_code(tmp_path, cache, zip_format):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "payload": TouchWhenUnpickled(str(marker))}, path, _use_new_zipfile_serialization=zip_format)
    with pytest.raises(WeightsError, match="refused to unpickle"):
        load_model(str(path), config="tiny")
    assert not marker.exists()
    raw = tmp_path / "raw.ckpt"
    raw.write_bytes(pickle.dumps(TouchWhenUnpickled(str(marker))))
    with pytest.raises(WeightsError):
        load_model(str(raw), config="tiny")
    assert not marker.exists()


# --------------------------------------------------------------------------- diffusers folder

_LEGACY = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}


def _legacy_vae_names(sd):
    out = {}
    for k, v in sd.items():
        for new, old in _LEGACY.items():
            k = k.replace(f"mid_block.attentions.0.{new}.", f"mid_block.attentions.0.{old}.")
        out[k] = v
    return out


def write_diffusers_folder(m, root: Path, legacy_vae: bool, text_prefix: str) -> None:
    cfg = m.config
    unet = ldm_to_diffusers_unet(m.unet.state_dict(), cfg.unet)
    vae = ldm_to_diffusers_vae(m.vae.state_dict(), cfg.vae)
    if legacy_vae:
        vae = _legacy_vae_names(vae)
    text = {text_prefix + k: v for k, v in openclip_to_hf_text(m.text_encoder.state_dict(), cfg.text).items()}
    text[text_prefix + "embeddings.position_ids"] = torch.arange(77)[None]
    for rel, sd in (("unet/diffusion_pytorch_model.safetensors", unet), ("vae/diffusion_pytorch_model.safetensors", vae), ("text_encoder/model.safetensors", text)):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in sd.items()}, str(root / rel))


@pytest.mark.parametrize("legacy_vae,text_prefix", [(True, "text_model."), (False, "")])
def test_diffusers_folder_round_trip(tiny, tmp_path, cache, legacy_vae, text_prefix):
    root = tmp_path / "sd2-diffusers"
    write_diffusers_folder(tiny, root, legacy_vae, text_prefix)
    if legacy_vae:
        names = __import__("safetensors").safe_open(str(root / "vae/diffusion_pytorch_model.safetensors"), "pt").keys()
        assert "encoder.mid_block.attentions.0.query.weight" in names
    m = load_model(str(root), config="tiny")
    assert_same_weights(m, tiny)
    assert len(m.sha256) == 64


def test_diffusers_folder_wrong_shape_is_named(tiny, tmp_path, cache):
    root = tmp_path / "bad"
    write_diffusers_folder(tiny, root, False, "")
    path = root / "unet/diffusion_pytorch_model.safetensors"
    sd = __import__("safetensors.torch").torch.load_file(str(path))
    sd["conv_in.weight"] = torch.zeros(32, 4, 3, 3)
    save_file(sd, str(path))
    with pytest.raises(WeightsError, match=r"input_blocks\.0\.0\.weight"):
        load_model(str(root), config="tiny")


def test_diffusers_mapping_matches_key_lists_and_prefix_maps():
    """Our tables turn the real LDM key lists into exactly diffusers' key lists, and agree with
    the independently derived prefix maps in tests/data (longest-prefix rewrite)."""

    def tsv(name, prefix=""):
        with open(DATA / name) as f:
            return {r[0][len(prefix):]: tuple(int(x) for x in r[1].strip("[]").split(",") if x.strip()) for r in csv.reader(f, delimiter="\t")}

    cfg = PRESETS["sd2-inpainting"]
    for ldm_file, diff_file, prefix, conv, pmap, c in (
        ("ldm_unet_keys.tsv", "diffusers_unet_keys.tsv", "model.diffusion_model.", ldm_to_diffusers_unet, "unet_prefix_map.tsv", cfg.unet),
        ("ldm_vae_keys.tsv", "diffusers_vae_keys.tsv", "first_stage_model.", ldm_to_diffusers_vae, "vae_prefix_map.tsv", cfg.vae),
    ):
        ldm = {k: torch.empty(s, device="meta") for k, s in tsv(ldm_file, prefix).items()}
        ours = {k: tuple(v.shape) for k, v in conv(ldm, c).items()}
        assert ours == tsv(diff_file), diff_file
        with open(DATA / pmap) as f:
            rules = {r[0]: r[1] for r in csv.reader(f, delimiter="\t") if r[0] != "(reshaped)"}
        renamed = {}
        for k in ldm:
            parts = k.split(".")
            for i in range(len(parts) - 1, -1, -1):
                head = ".".join(parts[:i])
                if head in rules:
                    renamed[k] = ".".join(p for p in [rules[head], *parts[i:]] if p)
                    break
        assert set(renamed.values()) == set(ours), pmap


# --------------------------------------------------------------------------- remote + cache


class SlowFS(AbstractFileSystem):
    """slowfs:///abs/path serves a local file slowly and appends a line to <path>.downloads per open."""

    protocol = "slowfs"
    root_marker = "/"
    delay = 0.3
    size_lie = 0
    fail_after = None

    @classmethod
    def _strip_protocol(cls, path):
        path = path[len("slowfs://"):] if path.startswith("slowfs://") else path
        return path or "/"

    def info(self, path, **kwargs):
        p = self._strip_protocol(path)
        if not os.path.exists(p):
            raise FileNotFoundError(p)
        kind = "directory" if os.path.isdir(p) else "file"
        return {"name": p, "size": os.path.getsize(p) + self.size_lie if kind == "file" else 0, "type": kind}

    def ls(self, path, detail=True, **kwargs):
        p = self._strip_protocol(path)
        entries = [self.info(os.path.join(p, n)) for n in sorted(os.listdir(p))]
        return entries if detail else [e["name"] for e in entries]

    def _open(self, path, mode="rb", **kwargs):
        p = self._strip_protocol(path)
        with open(p + ".downloads", "a") as f:
            f.write(f"{os.getpid()}\n")
        return _SlowFile(open(p, "rb"), self.delay, self.fail_after)


class _SlowFile:
    def __init__(self, f, delay, fail_after):
        self.f, self.delay, self.fail_after, self.n = f, delay, fail_after, 0

    def read(self, size=-1):
        time.sleep(self.delay)
        if self.fail_after is not None and self.n >= self.fail_after:
            raise ConnectionError("connection reset")
        data = self.f.read(size if size and size > 0 else 1 << 20)  # serve in pieces
        self.n += len(data)
        return data

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def _child_load(uri: str, cache_dir: str, barrier, out: str) -> None:
    fsspec.register_implementation("slowfs", SlowFS, clobber=True)
    barrier.wait()  # all loaders start together, so they really contend for the download
    m = load_model(uri, config="tiny", cache_dir=cache_dir)
    torch.save(m.state_dict(), out)


def test_concurrent_loaders_download_once(tiny, tiny_file, tmp_path):
    uri = f"slowfs://{tiny_file}"
    counter = Path(str(tiny_file) + ".downloads")
    counter.unlink(missing_ok=True)
    cache_dir = str(tmp_path / "shared-cache")
    ctx = mp.get_context("spawn")
    n = 3
    barrier = ctx.Barrier(n)
    outs = [str(tmp_path / f"child{i}.pt") for i in range(n)]
    procs = [ctx.Process(target=_child_load, args=(uri, cache_dir, barrier, out)) for out in outs]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
        assert p.exitcode == 0
    assert len(counter.read_text().split()) == 1  # exactly one download across processes
    ref = tiny.state_dict()
    for out in outs:
        sd = torch.load(out, weights_only=True)
        assert sd.keys() == ref.keys() and all(torch.equal(sd[k], ref[k]) for k in ref)
    files = os.listdir(cache_dir)
    assert not [f for f in files if ".tmp-" in f]
    assert sum(f.endswith(".sha256") for f in files) == 1


@pytest.fixture
def slowfs(monkeypatch):
    fsspec.register_implementation("slowfs", SlowFS, clobber=True)
    monkeypatch.setattr(SlowFS, "delay", 0.0)
    fsspec.AbstractFileSystem.clear_instance_cache()
    yield SlowFS
    fsspec.AbstractFileSystem.clear_instance_cache()


def test_half_written_temp_files_are_never_used(tiny, tiny_file, tmp_path, slowfs, monkeypatch):
    from rayinpaint.model.fetch import cached_name

    uri = f"slowfs://{tiny_file}"
    cache_dir = tmp_path / "c"
    cache_dir.mkdir()
    # a crashed earlier download left a partial temp file behind
    stale = cache_dir / (cached_name(uri) + ".tmp-999-dead")
    stale.write_bytes(tiny_file.read_bytes()[:1000])
    # an interrupted download raises, leaves neither the final file nor its temp file
    monkeypatch.setattr(SlowFS, "fail_after", 3 << 20)
    with pytest.raises(ConnectionError):
        load_model(uri, config="tiny", cache_dir=str(cache_dir))
    assert not (cache_dir / cached_name(uri)).exists()
    assert not [p for p in cache_dir.iterdir() if ".tmp-" in p.name]
    monkeypatch.setattr(SlowFS, "fail_after", None)
    m = load_model(uri, config="tiny", cache_dir=str(cache_dir))
    assert_same_weights(m, tiny)
    assert m.sha256 == hashlib.sha256(tiny_file.read_bytes()).hexdigest()


def test_remote_size_mismatch_is_an_error(tiny_file, tmp_path, slowfs, monkeypatch):
    monkeypatch.setattr(SlowFS, "size_lie", 7)
    with pytest.raises(WeightsError, match="remote size"):
        load_model(f"slowfs://{tiny_file}", config="tiny", cache_dir=str(tmp_path / "c"))
    assert not [p for p in (tmp_path / "c").iterdir() if not p.name.endswith(".lock")]


def test_remote_sha256_mismatch_is_an_error(tiny_file, tmp_path, slowfs):
    with pytest.raises(WeightsError, match="sha256 mismatch"):
        load_model(f"slowfs://{tiny_file}", config="tiny", cache_dir=str(tmp_path / "c"), sha256="ab" * 32)
    assert not [p for p in (tmp_path / "c").iterdir() if not p.name.endswith(".lock")]
    good = hashlib.sha256(tiny_file.read_bytes()).hexdigest()
    assert load_model(f"slowfs://{tiny_file}", config="tiny", cache_dir=str(tmp_path / "c"), sha256=good).sha256 == good


def test_memory_uri_is_cached_once(tiny, tiny_file, cache):
    fs = fsspec.filesystem("memory")
    fs.pipe("/weights/tiny.safetensors", tiny_file.read_bytes())
    m1 = load_model("memory://weights/tiny.safetensors", config="tiny")
    cached = [p for p in cache.iterdir() if p.name.endswith("tiny.safetensors")]
    assert len(cached) == 1
    mtime = cached[0].stat().st_mtime_ns
    m2 = load_model("memory://weights/tiny.safetensors", config="tiny")
    assert cached[0].stat().st_mtime_ns == mtime  # not downloaded again
    assert_same_weights(m1, tiny)
    assert_same_weights(m2, tiny)
    assert m1.sha256 == m2.sha256 == hashlib.sha256(tiny_file.read_bytes()).hexdigest()


def test_bad_specs_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="random weights spec"):
        load_model("random:huge")
    with pytest.raises(WeightsError, match="no such weights file"):
        load_model(str(tmp_path / "nope.safetensors"))


def test_s3_file_and_diffusers_folder_through_a_real_s3_endpoint(tiny, tiny_file, tmp_path, s3_bucket):
    """moto on loopback, used through s3fs exactly as in production."""
    bucket, opts = s3_bucket
    kw = opts.fsspec_kwargs("s3")
    fs = fsspec.filesystem("s3", **kw)
    fs.put(str(tiny_file), f"{bucket}/weights/tiny.safetensors")
    folder = tmp_path / "diffusers"
    write_diffusers_folder(tiny, folder, legacy_vae=True, text_prefix="text_model.")
    fs.put(str(folder), f"{bucket}/sd2-diffusers", recursive=True)
    cache_dir = str(tmp_path / "c")
    m = load_model(f"s3://{bucket}/weights/tiny.safetensors", config="tiny", cache_dir=cache_dir, storage_options=kw)
    assert_same_weights(m, tiny)
    assert m.sha256 == hashlib.sha256(tiny_file.read_bytes()).hexdigest()
    d = load_model(f"s3://{bucket}/sd2-diffusers", config="tiny", cache_dir=cache_dir, storage_options=kw)
    assert_same_weights(d, tiny)
