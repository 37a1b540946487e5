"""What kind of file a weights file is, from its first bytes and (for a torch checkpoint) its small pickle part,
so that the driver can refuse another format in one line before any worker starts.

Everything here reads a file through a seekable binary file object (a local file or an fsspec file: on an object
store each read is a ranged request), never the tensor data: a 5 GB `.safetensors` costs its header (a few
hundred kB); a 5 GB zip checkpoint costs its directory and its `data.pkl` (kB to a few MB); a checkpoint in torch's
legacy (non-zip) format costs its leading pickles, read up to where the tensors' bytes begin.
"""
from __future__ import annotations

import io
import pickle
import warnings
import zipfile
from typing import BinaryIO

from .checkpoint import WeightsError, read_safetensors_header, refused_to_unpickle, state_dict_of

CKPT_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")  # loaded with torch.load(weights_only=True) (checkpoint.py)

# First bytes of formats a weights path is sometimes given by mistake, with the name the message uses.
_MAGIC = {
    b"PAR1": "a Parquet file",
    b"PK\x03\x04": "a zip archive (torch.save's checkpoint format)",
    b"\x89HDF": "an HDF5 file (Keras .h5?)",
    b"GGUF": "a GGUF file (llama.cpp)",
    b"\x89PNG": "a PNG image",
    b"\xff\xd8\xff": "a JPEG image",
    b"{": "a JSON text",
}
_PICKLE_PROTOCOL = 0x80  # the first byte of a pickle of protocol 2 or later (torch's legacy checkpoint format)


def looks_like(first: bytes) -> str | None:
    """The format `first` (the file's first bytes) names, or None."""
    for magic, name in _MAGIC.items():
        if first.startswith(magic):
            return name
    if first[:1] == bytes([_PICKLE_PROTOCOL]):
        return "a pickle (torch's legacy checkpoint format)"
    return None


def safetensors_header(f: BinaryIO, name: str) -> dict:
    """The header of the safetensors file `f` (named `name`), or a WeightsError saying what the file is instead.
    The header is tried first: a real header's length may begin with any byte (a '{' or 0x80 included)."""
    first = f.read(8)
    f.seek(0)
    try:
        return read_safetensors_header(f)
    except WeightsError:
        other = looks_like(first)
        if other is None:
            raise
        raise WeightsError(f"{name} is {other}, not .safetensors weights") from None


def checkpoint_shapes(f: BinaryIO, name: str, max_pickle_bytes: int = 64 << 20) -> dict | None:
    """Tensor name -> shape of the torch checkpoint `f` (named `name`), read from its pickle part alone through
    torch's weights_only unpickler; a WeightsError when the file is another format or needs objects other than
    tensors and containers (what torch.load(weights_only=True) refuses on the workers). None when the layout
    cannot be checked cheaply (a pickle part over `max_pickle_bytes`): the workers' loading checks it."""
    first = f.read(4)
    f.seek(0)
    if first[:1] == bytes([_PICKLE_PROTOCOL]):
        return _legacy_shapes(f, name)
    if not first.startswith(b"PK\x03\x04"):
        what = looks_like(first) or f"not a torch checkpoint (it starts with {first!r})"
        raise WeightsError(f"{name} is {what}, not torch.save weights")
    try:
        archive = zipfile.ZipFile(f)
        pkl = [i for i in archive.infolist() if i.filename.endswith("/data.pkl") or i.filename == "data.pkl"]
        if not pkl:
            raise WeightsError(f"{name} is a zip archive without data.pkl, not a torch.save checkpoint")
        if pkl[0].file_size > max_pickle_bytes:
            return None
        data = archive.read(pkl[0])
    except zipfile.BadZipFile as e:
        raise WeightsError(f"{name}: cannot read the checkpoint's zip directory (truncated or corrupt?): {e}") \
            from None
    return _state_shapes(_unpickle_without_data(io.BytesIO(data), name), name)


def _legacy_shapes(f: BinaryIO, name: str) -> dict:
    """Shapes from torch's legacy (non-zip) format: pickles of a magic number, a protocol version and system
    information, then the object, then the tensors' bytes (never read here). Any other pickle is refused by the
    same unpickler, before a worker would try it."""
    import torch.serialization

    try:
        magic = _unpickle_without_data(f, name)
        if magic != torch.serialization.MAGIC_NUMBER:
            raise WeightsError(f"{name} is a pickle but not a torch checkpoint (no torch.save magic number)")
        _unpickle_without_data(f, name)  # protocol version
        _unpickle_without_data(f, name)  # system information
        return _state_shapes(_unpickle_without_data(f, name), name)
    except WeightsError:
        raise
    except (EOFError, ValueError, TypeError, IndexError) as e:
        raise WeightsError(f"{name}: cannot read the checkpoint's pickle (truncated or corrupt?): {e}") from None


def _unpickle_without_data(f: BinaryIO, name: str):
    """The next pickled object in `f`, every tensor on the meta device (shapes only, no bytes read), through torch's
    weights_only unpickler: a global it does not allow is refused, as torch.load(weights_only=True) refuses it."""
    import torch
    from torch._weights_only_unpickler import Unpickler

    def storage(pid):  # ('storage', storage type or dtype, key, location, number of elements)
        kind = pid[1]
        dtype = kind if isinstance(kind, torch.dtype) else kind.dtype
        nbytes = pid[4] * torch.empty((), dtype=dtype).element_size()
        return torch.storage.TypedStorage(wrap_storage=torch.UntypedStorage(nbytes, device="meta"), dtype=dtype,
                                          _internal=True)

    unpickler = Unpickler(f)
    unpickler.persistent_load = storage
    try:
        with warnings.catch_warnings():  # torch's note on a pickle protocol it did not write: not the user's line
            warnings.simplefilter("ignore", UserWarning)
            return unpickler.load()
    except pickle.UnpicklingError as e:
        raise refused_to_unpickle(name, e) from None


def _state_shapes(obj, name: str) -> dict:
    """name -> shape of the state dict in `obj`, checked as checkpoint.open_ckpt checks it."""
    return {k: tuple(v.shape) for k, v in state_dict_of(obj, name).items()}
