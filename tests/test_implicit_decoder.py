"""The implicit (any-size) decoder: coordinates, tiling, model folders, --size/--zoom (issue 19).

Micro random models only (seconds): the weights are noise, the mechanics are real.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tadmcodec import api, container, registry
from tadmcodec.codec import Codec, output_size, parse_size
from tadmcodec.errors import InputError, ModelError
from tadmcodec.tadm import spec as S
from tadmcodec.tadm.implicit import ImplicitDecoder, axis_queries, render_latent, shared_fingerprint
from tadmcodec.tadm.loader import load_model_dir
from tadmcodec.tadm.testing import MICRO_IMPLICIT, make_random_model, make_random_model_dir

TADM = [sys.executable, "-m", "tadmcodec"]
NAME = "tadm-tiny-x16"


def photo(w: int, h: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([x * 255 / w, y * 255 / h, 128 + 50 * np.sin(x / 5.0) * np.cos(y / 4.0)], axis=2)
    return np.clip(img + rng.normal(0, 3, img.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("implicit")
    return {
        "plain": make_random_model_dir(root / "plain", 16, seed=0, adapters=False, lora=False),
        "implicit": make_random_model_dir(root / "implicit", 16, seed=0, adapters=False, lora=False,
                                          implicit=MICRO_IMPLICIT),
    }


# --------------------------------------------------------------------------- coordinates


@pytest.mark.parametrize("n_out,n_img,n_lat", [(37, 37, 5), (19, 37, 5), (75, 37, 5), (1, 9, 2), (101, 203, 26)])
def test_queries_put_pixel_centres_and_cells_right_on_odd_sizes(n_out: int, n_img: int, n_lat: int) -> None:
    q = axis_queries(n_out, n_img, n_lat)
    px = n_img / n_out
    centres = (np.arange(n_out) + 0.5) * px  # image pixels
    assert q.cell == pytest.approx(px)
    assert np.allclose(centres + centres[::-1], n_img)  # symmetric about the image's centre
    u = centres / 8 - 0.5  # latent cells: cell k covers image pixels [8k, 8k + 8)
    idx, rel, w = q.idx.numpy(), q.rel.numpy().astype(np.float64), q.weight.numpy().astype(np.float64)
    assert idx.min() >= 0 and idx.max() <= n_lat - 1
    assert np.allclose(idx + rel, u[None, :], atol=1e-5)  # each offset is measured from that cell's centre
    assert np.allclose(w.sum(0), 1.0) and (w >= 0).all()
    inside = (u >= 0) & (u <= n_lat - 1)
    assert np.allclose((w * idx).sum(0)[inside], u[inside], atol=1e-5)  # linear weights: they locate the centre
    assert (np.abs(rel[:, inside]) <= 1 + 1e-6).all()


def probe_decoder() -> tuple[ImplicitDecoder, int]:
    """A LIIF head that outputs (ensemble-weighted feature row, feature column, cell height): linear by construction."""
    model = make_random_model(16, seed=3, lora=False, implicit=dataclasses.replace(MICRO_IMPLICIT, layers=1))
    dec = model.implicit
    hid = dec.config.hidden
    with torch.no_grad():
        dec.coord.weight.zero_()
        dec.coord.weight[2, 2] = 1.0  # channel 2 += cell_y
        dec.mlp[0].weight.copy_(torch.eye(hid))
        dec.mlp[0].bias.zero_()
        dec.out.weight.zero_()
        dec.out.bias.fill_(-10.0)
        for c in range(3):
            dec.out.weight[c, c] = 1.0
    return dec, hid


@pytest.mark.parametrize("out_size", [(23, 17), (64, 48), (9, 41), (5, 3)])
def test_rendered_position_and_cell_of_every_output_pixel(out_size: tuple[int, int]) -> None:
    """Feed h0 = (row + 10, column + 10, 10): the render must return each pixel's centre in latent cells and its cell."""
    dec, hid = probe_decoder()
    img_w, img_h, lat_w, lat_h = 37, 29, 5, 4  # odd image sides on a latent covering 40 x 32 pixels
    h0 = torch.zeros(1, hid, lat_h, lat_w)
    h0[0, 0] = torch.arange(lat_h, dtype=torch.float32)[:, None] + 10
    h0[0, 1] = torch.arange(lat_w, dtype=torch.float32)[None, :] + 10
    h0[0, 2] = 10
    with torch.no_grad():
        out = dec.render(h0, axis_queries(out_size[1], img_h, lat_h), axis_queries(out_size[0], img_w, lat_w))[0]
    assert out.shape == (3, out_size[1], out_size[0])
    uy = np.clip((np.arange(out_size[1]) + 0.5) * img_h / out_size[1] / 8 - 0.5, 0, lat_h - 1)
    ux = np.clip((np.arange(out_size[0]) + 0.5) * img_w / out_size[0] / 8 - 0.5, 0, lat_w - 1)
    assert np.allclose(out[0].numpy(), uy[:, None], atol=1e-4)
    assert np.allclose(out[1].numpy(), ux[None, :], atol=1e-4)
    assert np.allclose(out[2].numpy(), img_h / out_size[1], atol=1e-4)


# --------------------------------------------------------------------------------- tiling


def test_tiled_implicit_decode_equals_untiled() -> None:
    model = make_random_model(16, seed=2, lora=False, implicit=dataclasses.replace(MICRO_IMPLICIT, stats_grid=99))
    model.eval().requires_grad_(False)
    dec = model.implicit
    g = torch.Generator().manual_seed(0)
    z = torch.nn.functional.interpolate(torch.randn(1, 4, 8, 8, generator=g), size=(45, 53), mode="bicubic")
    img, out = (421, 357), (301, 233)
    with torch.inference_mode():
        whole = render_latent(model.vae, dec, z, img, out, tiled=False)
        tiled = render_latent(model.vae, dec, z, img, out, tiled=True)  # 8-cell cores: 6 x 7 tiles
        dec.config = dataclasses.replace(dec.config, render_pixels=97)
        small_blocks = render_latent(model.vae, dec, z, img, out, tiled=False)
    assert whole.shape == (233, 301, 3)
    assert np.array_equal(small_blocks, whole)  # rendering block by block is exact
    diff = np.abs(tiled.astype(int) - whole.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3  # tiles: float summation order only
    assert dec.receptive_radius(model.vae) + 1 <= dec.config.feature_halo


def test_tiled_features_use_shared_group_norm_statistics() -> None:
    """With the default sample grid the statistics are estimated, yet tiles cannot be told apart."""
    model = make_random_model(16, seed=2, lora=False, implicit=MICRO_IMPLICIT).eval().requires_grad_(False)
    z = torch.nn.functional.interpolate(torch.randn(1, 4, 6, 6, generator=torch.Generator().manual_seed(1)),
                                        size=(50, 50), mode="bicubic")
    with torch.inference_mode():
        whole = render_latent(model.vae, model.implicit, z, (400, 400), (200, 200), tiled=False).astype(int)
        tiled = render_latent(model.vae, model.implicit, z, (400, 400), (200, 200), tiled=True).astype(int)
    assert np.abs(tiled - whole).mean() < 2.0


# ---------------------------------------------------------------------------- model folders


def test_model_folder_without_the_decoder_still_loads(folders: dict[str, Path]) -> None:
    cfg = S.read_config(folders["plain"])
    assert cfg.implicit_decoder is None and not (folders["plain"] / S.IMPLICIT_FILE).exists()
    assert "implicit_decoder" not in json.loads((folders["plain"] / "model.json").read_text()) or \
        json.loads((folders["plain"] / "model.json").read_text())["implicit_decoder"] is None
    model = load_model_dir(folders["plain"])
    assert model.implicit is None
    assert registry.with_weights_dir(registry.get(NAME), folders["plain"]).availability()[0]
    model = load_model_dir(folders["implicit"])
    assert isinstance(model.implicit, ImplicitDecoder)


def test_the_implicit_decoder_is_not_part_of_the_digest(folders: dict[str, Path], tmp_path: Path) -> None:
    plain = registry.with_weights_dir(registry.get(NAME), folders["plain"])
    implicit = registry.with_weights_dir(registry.get(NAME), folders["implicit"])
    assert plain.digest() == implicit.digest()  # same model otherwise (same seed)
    assert registry.IMPLICIT_KEY == S.IMPLICIT_KEY and registry.IMPLICIT_FILE == S.IMPLICIT_FILE
    # but the rest still is
    other = make_random_model_dir(tmp_path / "other", 16, seed=5, adapters=False, lora=False)
    assert registry.with_weights_dir(registry.get(NAME), other).digest() != plain.digest()


def export_of(folder: Path, out: Path) -> Path:
    """An export folder (what `python -m tadmcodec.train.liif export` writes) of a folder's decoder."""
    from safetensors.torch import save_file

    model = load_model_dir(folder)
    cfg = dataclasses.replace(model.config.implicit_decoder, vae_sha256=shared_fingerprint(model.vae,
                                                                                             model.config.implicit_decoder))
    out.mkdir()
    save_file({k: v.half().contiguous() for k, v in model.implicit.state_dict().items()}, str(out / S.IMPLICIT_FILE))
    (out / "implicit_decoder.json").write_text(json.dumps(dataclasses.asdict(cfg)))
    return out


def test_install_into_a_model_folder(folders: dict[str, Path], tmp_path: Path) -> None:
    from tadmcodec.train.liif import install

    export = export_of(folders["implicit"], tmp_path / "export")
    target = shutil.copytree(folders["plain"], tmp_path / "target")
    before = registry.with_weights_dir(registry.get(NAME), target).digest()
    data = Codec(device="cpu", model_dirs={NAME: target}).encode(photo(70, 45), NAME, 16)
    install(export, target)
    assert registry.with_weights_dir(registry.get(NAME), target).digest() == before
    assert S.read_config(target).implicit_decoder.vae_sha256
    codec = Codec(device="cpu", model_dirs={NAME: target})
    dec = codec.decode(data, zoom=0.5)  # a file made before the install decodes, now at any size
    assert dec.pixels.shape == (22, 35, 3) and dec.path == "implicit decoder"
    # another VAE: refused at install, and ignored (with the reason) at load
    other = make_random_model_dir(tmp_path / "other", 16, seed=5, adapters=False, lora=False)
    with pytest.raises(ModelError, match="not the one this implicit decoder was trained on"):
        install(export, other)
    shutil.copy(export / S.IMPLICIT_FILE, other / S.IMPLICIT_FILE)
    cfg = json.loads((other / "model.json").read_text())
    cfg["implicit_decoder"] = json.loads((export / "implicit_decoder.json").read_text())
    (other / "model.json").write_text(json.dumps(cfg))
    model = load_model_dir(other)
    assert model.implicit is None and "other VAE weights" in model.implicit_note


# ------------------------------------------------------------------------- sizes and paths


def test_output_sizes() -> None:
    assert parse_size("1920x1080") == (1920, 1080)
    assert parse_size("1920x") == (1920, None) and parse_size("1920") == (1920, None)
    assert parse_size("x1080") == (None, 1080) and parse_size(" 64X48 ") == (64, 48)
    for bad in ("x", "", "axb", "0x5", "-3x4", "1.5x2", "12x34x5"):
        with pytest.raises(InputError):
            parse_size(bad)
    assert output_size((1001, 667)) is None
    assert output_size((1001, 667), (500, None)) == (500, 333)
    assert output_size((1001, 667), (None, 100)) == (150, 100)
    assert output_size((1001, 667), zoom=0.25) == (250, 167)
    assert output_size((3, 3), zoom=0.1) == (1, 1)
    for kw in ({"zoom": 4.5}, {"zoom": 0.05}, {"size": (5000, None)}, {"size": (10, 10), "zoom": 1.0},
               {"size": (0, 4)}, {"size": (None, None)}, {"zoom": "2"}):
        with pytest.raises(InputError):
            output_size((1001, 667), **kw)


def test_decode_paths(folders: dict[str, Path]) -> None:
    img = photo(93, 61)
    plain = Codec(device="cpu", model_dirs={NAME: folders["plain"]})
    implicit = Codec(device="cpu", model_dirs={NAME: folders["implicit"]})
    data = plain.encode(img, NAME, 16)
    full = plain.decode(data)
    assert full.path == "VAE decoder" and full.pixels.shape == (61, 93, 3)
    # the digest is the same, so the same file decodes with the folder that has the decoder
    assert np.array_equal(implicit.decode(data).pixels, full.pixels)  # unasked: the VAE, same pixels
    half = plain.decode(data, zoom=0.5)
    assert half.path == "VAE decoder at full size, then Lanczos" and half.pixels.shape == (30, 46, 3)
    lz = np.asarray(Image.fromarray(full.pixels).resize((46, 30), Image.Resampling.LANCZOS))
    assert np.array_equal(half.pixels, lz)
    d = implicit.decode(data, size=(None, 100))
    assert d.path == "implicit decoder" and d.pixels.shape == (100, 152, 3)
    assert implicit.decode(data, zoom=1.0).pixels.shape == (61, 93, 3)
    tiny = implicit.decode(data, size=(7, 5))  # below the trained range: render there, then Lanczos
    assert tiny.pixels.shape == (5, 7, 3) and tiny.path.startswith("implicit decoder at 12x8, then Lanczos")
    assert implicit.decode(data, zoom=0.5, method="vae").path == "VAE decoder at full size, then Lanczos"
    with pytest.raises(ModelError, match="no implicit decoder"):
        plain.decode(data, zoom=0.5, method="implicit")
    bic = Codec().encode(img, "bicubic", 16)
    b = Codec().decode(bic, zoom=2)
    assert b.path == "bicubic, then Lanczos" and b.pixels.shape == (122, 186, 3)
    with pytest.raises(InputError, match="more than 10000 pixels"):
        Codec().decode(bic, zoom=2, max_pixels=10000)  # the file is within the budget, its output is not


def test_a_model_with_the_lr_projection_projects_its_implicit_renderings(tmp_path: Path) -> None:
    """As its VAE decodes are: each rendering is back-projected onto the LR image at its own size."""
    from tadmcodec.lr_projection import project_onto_lr_resized
    from tadmcodec.tadm.pipeline import TadmRescaler

    folder = make_random_model_dir(tmp_path / "proj", 16, seed=0, adapters=False, lora=False,
                                   implicit=MICRO_IMPLICIT, lr_projection=True)
    r = TadmRescaler(load_model_dir(folder))
    img = photo(93, 61)
    lr = r.downscale(img, 16)
    on, _, path = r.render(lr, 16, (93, 61), (140, 92))
    assert path == "implicit decoder, LR back-projection" and on.shape == (92, 140, 3)
    r.enable_lr_projection(False)
    off, _, path_off = r.render(lr, 16, (93, 61), (140, 92))
    assert path_off == "implicit decoder"
    assert np.array_equal(on, project_onto_lr_resized(off, lr, 16, (93, 61)))
    r.enable_lr_projection(True)
    # below the trained range it projects where it rendered, then resamples
    small, _, path_small = r.render(lr, 16, (93, 61), (7, 5))
    assert small.shape == (5, 7, 3) and path_small == "implicit decoder, LR back-projection at 12x8, then Lanczos"


def test_api_size_and_zoom(folders: dict[str, Path]) -> None:
    data = api.encode(photo(80, 48), "bicubic", 16)
    im = api.decode(data, zoom=0.5)
    assert im.size == (40, 24) and im.info["tadm_path"] == "bicubic, then Lanczos"
    assert api.decode(data, size="x12", output="numpy").shape == (12, 20, 3)
    assert api.decode(data, size=(30, None)).size == (30, 18)
    with pytest.raises(InputError, match="exclude"):
        api.decode(data, size=(30, None), zoom=2)
    with pytest.raises(InputError, match="outside"):
        api.decode(b"not even a file", zoom=9)  # the option is checked before the file is read
    data16 = api.encode(photo(80, 48), NAME, model_dir=folders["implicit"], device="cpu")
    im = api.decode(data16, zoom=2, model_dir=folders["implicit"], device="cpu")
    assert im.size == (160, 96) and im.info["tadm_path"] == "implicit decoder"


# ------------------------------------------------------------------------------------- CLI


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*TADM, *args], capture_output=True, cwd=cwd, timeout=120)


def one_line(proc: subprocess.CompletedProcess) -> str:
    err = proc.stderr.decode()
    assert proc.returncode == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("tadm: ") and "Traceback" not in err, err
    return lines[0]


def test_cli_size_and_zoom(folders: dict[str, Path], tmp_path: Path) -> None:
    Image.fromarray(photo(90, 60)).save(tmp_path / "a.png")
    assert run("encode", "a.png", "-m", "bicubic", "-s", "16", cwd=tmp_path).returncode == 0
    p = run("decode", "a.tadm", "-o", "small.png", "--size", "45x", "-v", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert Image.open(tmp_path / "small.png").size == (45, 30)
    assert "90x60 -> 45x30 by bicubic, then Lanczos" in p.stderr.decode()
    errors = {
        ("--size", "abc"): "size 'abc'",
        ("--size", "0x10"): "at least 1 pixel",
        ("--zoom", "5"): "--zoom 5 is outside 0.1-4",
        ("--zoom", "0.01"): "outside 0.1-4",
        ("--zoom", "x"): "--zoom",
        ("--size", "40x", "--zoom", "2"): "exclude each other",
        ("--size", "1000x"): "more than 4 times the original 90x60",
    }
    for args, needle in errors.items():
        line = one_line(run("decode", "a.tadm", "-o", "bad.png", *args, cwd=tmp_path))
        assert needle in line, (args, line)
        assert not (tmp_path / "bad.png").exists() and not list(tmp_path.glob("*.part"))
    # a TADM model with the decoder: -v names the implicit path
    cfg_dir = folders["implicit"]
    assert run("encode", "a.png", "-o", "t.tadm", "-m", NAME, "--model-dir", str(cfg_dir), "--device", "cpu",
               cwd=tmp_path).returncode == 0
    p = run("decode", "t.tadm", "-o", "z.png", "--zoom", "1.5", "--model-dir", str(cfg_dir), "--device", "cpu",
            "-v", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert Image.open(tmp_path / "z.png").size == (135, 90)
    assert "-> 135x90 by implicit decoder" in p.stderr.decode()


def test_pillow_thumbnail_decodes_at_the_reduced_size(folders: dict[str, Path], tmp_path: Path) -> None:
    import tadmcodec.pillow as plugin

    data = api.encode(photo(160, 96), NAME, model_dir=folders["implicit"], device="cpu")
    (tmp_path / "a.tadm").write_bytes(data)
    plugin.register(device="cpu", model_dirs={NAME: folders["implicit"]})
    try:
        with Image.open(tmp_path / "a.tadm") as im:
            assert im.draft("RGB", (40, 40)) == ("RGB", (0, 0, 67, 40))  # not below the asked size
            assert im.size == (67, 40)
            im.load()
            direct = api.decode(data, size=(67, 40), model_dir=folders["implicit"], device="cpu")
            assert np.array_equal(np.asarray(im), np.asarray(direct))
        with Image.open(tmp_path / "a.tadm") as im:
            im.thumbnail((20, 20))  # draft at twice the size (Pillow's reducing_gap), then Pillow's resize
            assert im.size == (20, 12)
        with Image.open(tmp_path / "a.tadm") as im:
            assert im.draft(None, (400, 400)) is None and im.size == (160, 96)  # no enlarging
    finally:
        plugin.register()


def test_fingerprint_is_of_values() -> None:
    """-0.0 and 0.0 are the same weight (the packaged x32 VAE and the backbone differ only so)."""
    model = make_random_model(16, seed=4, lora=False)
    cfg = MICRO_IMPLICIT
    before = shared_fingerprint(model.vae, cfg)
    with torch.no_grad():
        model.vae.decoder.conv_in.bias[0] = 0.0
        zero = shared_fingerprint(model.vae, cfg)
        model.vae.decoder.conv_in.bias[0] = -0.0
        assert shared_fingerprint(model.vae, cfg) == zero != before
        model.vae.decoder.up_blocks[-1].resnets[0].conv1.bias[0] += 1.0  # not a shared block
        assert shared_fingerprint(model.vae, cfg) == zero


def test_trainer_runs_exports_and_continues_from_an_export(folders: dict[str, Path], tmp_path: Path) -> None:
    """`python -m tadmcodec.train.liif train` end to end on a micro VAE, then `--init` from its export."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(2):
        Image.fromarray(photo(96, 80, seed=i)).save(photos / f"p{i}.png")
    cfg = {"name": "liif-test", "vae_dir": str(folders["plain"]), "train_dir": str(photos), "steps": 2,
           "batch_size": 2, "window": 8, "min_cells": 4, "lpips_weight": 0.0, "log_every": 1,
           "implicit": dataclasses.asdict(MICRO_IMPLICIT) | {"vae_sha256": ""}}
    (tmp_path / "liif.json").write_text(json.dumps(cfg))
    base = [sys.executable, "-m", "tadmcodec.train.liif", "train", "--config", str(tmp_path / "liif.json")]
    run = subprocess.run(base + ["--run-dir", str(tmp_path / "a")], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    export = tmp_path / "a" / "export"
    assert (export / S.IMPLICIT_FILE).is_file() and "[liif] step 2" in run.stderr
    again = subprocess.run(base + ["--run-dir", str(tmp_path / "b"), "--init", str(export), "--steps", "1"],
                           capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert f"starting from {export / S.IMPLICIT_FILE}" in again.stderr and "[liif] step 1 " in again.stderr
    both = subprocess.run(base + ["--run-dir", str(tmp_path / "c"), "--init", str(export), "--resume"],
                          capture_output=True, text=True)
    assert both.returncode == 2 and len(both.stderr.strip().splitlines()) == 1
    target = shutil.copytree(folders["plain"], tmp_path / "target")
    from tadmcodec.train.liif import install

    install(tmp_path / "b" / "export", target)
    assert load_model_dir(target).implicit is not None


def test_benchmark_script_end_to_end(tmp_path: Path) -> None:
    """benchmarks/implicit_decoder.py on a micro x32 model with the LR back-projection, --big included."""
    model = make_random_model_dir(tmp_path / "m", 32, seed=0, adapters=False, lora=False,
                                  implicit=MICRO_IMPLICIT, lr_projection=True)
    data = tmp_path / "photos"
    data.mkdir()
    Image.fromarray(photo(160, 136)).save(data / "p1.png")  # zoom 0.25 must leave the metrics 32 px
    out = tmp_path / "out"
    root = Path(__file__).resolve().parent.parent
    r = subprocess.run([sys.executable, str(root / "benchmarks" / "implicit_decoder.py"), "--model-dir", str(model),
                        "--data", str(data), "--photos", "1", "--crop", "144", "--big", "128",
                        "--big-photo", str(data / "p1.png"), "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    doc = json.loads((out / "results.json").read_text())
    row = doc["rows"][0]
    assert row["lr_projection"] is True and row["size"] == [144, 136]
    assert row["z0.5_implicit_path"] == "implicit decoder, LR back-projection"
    assert row["z0.5_vae_path"] == "VAE decoder at full size, then Lanczos"
    assert {b["mode"] for b in doc["big"]} == {"implicit", "vae"} and all(b["out"] == [32, 32] for b in doc["big"])
    text = (out / "summary.md").read_text()
    assert "LR back-projection on, in both paths" in text and "## A 128x128 original at zoom 0.25" in text


DEV_WEIGHTS = Path(__file__).resolve().parents[1] / "dev-weights"


@pytest.mark.parametrize("liif, model", [("liif-x32", "tadm-tiny-x32"), ("liif-tiny", "tadm-tiny-x16")])
def test_committed_implicit_decoders_install_into_the_packaged_model_they_were_trained_for(
        liif: str, model: str, tmp_path: Path) -> None:
    """dev-weights/<liif> goes into a copy of tadmcodec/weights/<model> (same VAE), and the folder's digest stays."""
    import shutil

    from tadmcodec import registry
    from tadmcodec.train.liif import install

    src, pkg = DEV_WEIGHTS / liif, registry.PACKAGE_WEIGHTS / model
    if not (src / "implicit_decoder.safetensors").is_file() or not (pkg / "model.json").is_file():
        pytest.skip(f"dev-weights/{liif} or {model}'s packaged weights are not in this checkout")
    folder = tmp_path / model
    shutil.copytree(pkg, folder)
    install(src, folder)
    spec = registry.with_weights_dir(registry.get(model), folder)
    assert spec.availability()[0] and "implicit_decoder" in spec.config()
    assert spec.digest().hex() == registry.get(model).pinned_digest  # files made before keep decoding
