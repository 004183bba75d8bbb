"""Restricted readers for the two pickle-based weight files the metrics need.

The pretrained weights ship inside third-party packages as pickles: the LPIPS
trunks as flax parameter trees (nested dicts of numpy arrays) and DISTS's
alpha/beta as a legacy (pre-zip) `torch.save` file. Unpickling runs whatever
callables a file names, so both readers here resolve only the few globals
needed to rebuild plain numeric arrays and refuse everything else. Nothing here
imports torch: tensors in the torch file are rebuilt from their raw storages
with numpy.
"""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass
from typing import Any

import numpy as np

from tadmcodec.errors import FormatError

_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_TORCH_LEGACY_PROTOCOL = 1001

# torch storage classes of the legacy format -> numpy dtype of their elements.
_STORAGE_DTYPES = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
}


def _reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    """Stand-in for numpy's `_reconstruct`: an empty base ndarray that BUILD then fills."""
    if subtype is not np.ndarray:
        raise FormatError("weight pickle asks for an ndarray subclass; refusing it")
    return np.ndarray.__new__(np.ndarray, shape, dtype)


def _frombuffer(buf: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    """Stand-in for numpy's `_frombuffer`, used by protocol-5 array pickles."""
    dtype = np.dtype(dtype)
    if dtype.hasobject or order not in ("C", "F"):
        raise FormatError("weight pickle holds an object array or an unknown memory order")
    return np.frombuffer(buf, dtype=dtype).reshape(shape, order=order).copy()


def _latin1_bytes(text: Any, encoding: Any = "latin1") -> bytes:
    """Stand-in for `_codecs.encode`, which protocol-2 pickles use to carry raw bytes."""
    if not isinstance(text, str) or encoding != "latin1":
        raise FormatError("weight pickle calls _codecs.encode with unexpected arguments")
    return text.encode("latin1")


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Resolves only ndarray, dtype, numpy's array reconstructor and latin-1 byte strings."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "numpy" and name == "ndarray":
            return np.ndarray
        if module == "numpy" and name == "dtype":
            return np.dtype
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name == "_reconstruct":
            return _reconstruct
        if module in ("numpy.core.numeric", "numpy._core.numeric") and name == "_frombuffer":
            return _frombuffer
        if module == "_codecs" and name == "encode":
            return _latin1_bytes
        raise FormatError(f"weight pickle references {module}.{name}; only numpy arrays are allowed")

    def persistent_load(self, pid: Any) -> Any:
        raise FormatError("weight pickle uses persistent ids; refusing it")


class _PrimitivesUnpickler(pickle.Unpickler):
    """Reads pickles that may only hold built-in values (ints, strings, dicts, lists)."""

    def find_class(self, module: str, name: str) -> Any:
        raise FormatError(f"header pickle references {module}.{name}; refusing it")


def _check_numeric_tree(tree: Any, where: str = "") -> None:
    """Reject anything but dicts/lists of numeric (non-object) ndarrays."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            if not isinstance(key, str):
                raise FormatError(f"weight tree has a non-string key at {where or '/'}")
            _check_numeric_tree(value, f"{where}/{key}")
    elif isinstance(tree, (list, tuple)):
        for i, value in enumerate(tree):
            _check_numeric_tree(value, f"{where}/{i}")
    elif isinstance(tree, np.ndarray):
        if tree.dtype.hasobject or tree.dtype.kind not in "fiub":
            raise FormatError(f"weight array {where} has dtype {tree.dtype}; expected numbers")
    else:
        raise FormatError(f"weight tree holds a {type(tree).__name__} at {where}; expected arrays")


def load_numpy_pickle(data: bytes) -> Any:
    """Unpickle a tree of dicts/lists whose leaves are numeric numpy arrays."""
    try:
        tree = _NumpyOnlyUnpickler(io.BytesIO(data)).load()
    except FormatError:
        raise
    except Exception as exc:  # malformed pickle bytes: report, never a traceback
        raise FormatError(f"cannot read weight pickle: {exc}") from None
    _check_numeric_tree(tree)
    return tree


# --- legacy torch.save files -------------------------------------------------


@dataclass
class _StorageType:
    dtype: np.dtype


@dataclass
class _Storage:
    dtype: np.dtype
    numel: int
    data: np.ndarray | None = None


@dataclass
class _LazyTensor:
    """A tensor whose storage bytes follow the pickle; materialised afterwards."""

    storage: _Storage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, *_rest: Any) -> _LazyTensor:
    """Stand-in for torch's `_rebuild_tensor_v2`; the trailing args (requires_grad, hooks) are ignored."""
    if not isinstance(storage, _Storage):
        raise FormatError("torch weight file: tensor without a storage")
    try:
        return _LazyTensor(storage, int(offset), tuple(int(s) for s in size), tuple(int(s) for s in stride))
    except (TypeError, ValueError):
        raise FormatError("torch weight file: malformed tensor header") from None


def _empty_ordered_dict(*args: Any) -> dict:
    """Backward-hook dicts are pickled as `OrderedDict()`; only the empty form is accepted."""
    if args and args != ((),) and args != ([],):
        raise FormatError("torch weight file: tensor with backward hooks; refusing it")
    return {}


class _TorchLegacyUnpickler(pickle.Unpickler):
    """Main pickle of a legacy torch file: storages become placeholders filled later."""

    def __init__(self, file: io.BytesIO) -> None:
        super().__init__(file)
        self.storages: dict[str, _Storage] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "collections" and name == "OrderedDict":
            return _empty_ordered_dict
        raise FormatError(f"torch weight file references {module}.{name}; only tensors are allowed")

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"):
            raise FormatError("torch weight file: unknown persistent id")
        _, storage_type, key, _location, numel, view = pid
        if not isinstance(storage_type, _StorageType) or view is not None:
            raise FormatError("torch weight file: unsupported storage reference")
        key = str(key)
        if key not in self.storages:
            self.storages[key] = _Storage(storage_type.dtype, int(numel))
        return self.storages[key]


def _materialise(obj: Any) -> Any:
    """Replace every lazy tensor in a dict/list tree by a numpy copy of its view."""
    if isinstance(obj, dict):
        return {k: _materialise(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialise(v) for v in obj)
    if isinstance(obj, _LazyTensor):
        data = obj.storage.data
        assert data is not None
        if any(s < 0 for s in obj.size) or any(s < 0 for s in obj.stride) or obj.offset < 0:
            raise FormatError("torch weight file: negative tensor size or stride")
        last = obj.offset + sum((n - 1) * st for n, st in zip(obj.size, obj.stride)) if all(obj.size) else -1
        if last >= data.size:
            raise FormatError("torch weight file: tensor reaches past its storage")
        itemsize = data.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            data[obj.offset :], shape=obj.size, strides=tuple(s * itemsize for s in obj.stride)
        )
        return np.array(view, copy=True)
    return obj


def load_torch_legacy(data: bytes) -> Any:
    """Read a pre-1.6 `torch.save` file holding a dict of tensors, as numpy arrays.

    Layout: pickled magic number, protocol version and system info; the main
    pickle (storages as persistent ids); a pickled list of storage keys; then
    for each key an int64 element count followed by the raw little-endian data.
    """
    f = io.BytesIO(data)
    try:
        magic = _PrimitivesUnpickler(f).load()
        protocol = _PrimitivesUnpickler(f).load()
        sys_info = _PrimitivesUnpickler(f).load()
        if magic != _TORCH_LEGACY_MAGIC or protocol != _TORCH_LEGACY_PROTOCOL:
            raise FormatError("not a legacy torch.save file (bad magic number or protocol)")
        if not isinstance(sys_info, dict) or not sys_info.get("little_endian", False):
            raise FormatError("torch weight file was written on a big-endian machine; unsupported")
        main = _TorchLegacyUnpickler(f)
        tree = main.load()
        keys = _PrimitivesUnpickler(f).load()
    except FormatError:
        raise
    except Exception as exc:
        raise FormatError(f"cannot read torch weight file: {exc}") from None
    if not isinstance(keys, list) or sorted(map(str, keys)) != sorted(main.storages):
        raise FormatError("torch weight file: storage list does not match the tensors")
    for key in keys:
        storage = main.storages[str(key)]
        header = f.read(8)
        if len(header) != 8:
            raise FormatError("torch weight file is truncated")
        count = int.from_bytes(header, "little", signed=True)
        nbytes = count * storage.dtype.itemsize
        raw = f.read(nbytes)
        if count != storage.numel or len(raw) != nbytes:
            raise FormatError("torch weight file: storage size mismatch or truncation")
        storage.data = np.frombuffer(raw, dtype=storage.dtype)
    if f.read(1):
        raise FormatError("torch weight file has trailing bytes")
    return _materialise(tree)
