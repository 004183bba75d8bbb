"""The encoder's choice of LR image (`tadmcodec.lr_choice`): units with a fake model, then the codec,
the API and the CLI with the random micro TADM model."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tadmcodec import container, lrcodec
from tadmcodec.lr_choice import EFFORTS, Choice, check_effort, choose_lr
from tadmcodec.rescaler import BicubicRescaler, lr_size

BIC = BicubicRescaler()


def smooth(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([x * 255 / w, y * 255 / h, 128 + 60 * np.sin(x / 9 + y / 13)], axis=2)
    return np.clip(img + rng.normal(0, 3, img.shape), 0, 255).astype(np.uint8)


class Fake:
    """A model whose own LR image is the bicubic one shifted by `offset` grey levels, and whose
    decoder returns `perfect` for its own LR image (else bicubic upscaling): counts its decodes."""

    name, scales = "fake", (8,)

    def __init__(self, offset: int, perfect: np.ndarray | None = None) -> None:
        self.offset, self.perfect, self.decodes = offset, perfect, 0

    def downscale(self, image: np.ndarray, scale: int) -> np.ndarray:
        return np.clip(BIC.downscale(image, scale).astype(int) + self.offset, 0, 255).astype(np.uint8)

    def upscale(self, lr: np.ndarray, scale: int, size: tuple[int, int]) -> np.ndarray:
        self.decodes += 1
        if self.perfect is not None and self.offset and np.array_equal(lr, self.downscale(self.perfect, scale)):
            return self.perfect.copy()
        return BIC.upscale(lr, scale, size)


def test_a_stray_lr_image_loses_to_the_bicubic_one() -> None:
    img = smooth(64, 80)
    fake = Fake(offset=12)
    choice = choose_lr(fake, img, 8, fake.downscale(img, 8), effort=2)
    assert fake.decodes == 2
    assert choice.kept.source == "bicubic" and np.array_equal(choice.kept.lr, BIC.downscale(img, 8))
    model, bic = choice.tried
    assert (model.source, bic.source) == ("model", "bicubic") and bic.psnr > model.psnr
    assert choice.describe().startswith("LR image kept: the bicubic downscale (trial decodes: model ")


def test_an_lr_image_that_decodes_better_is_kept() -> None:
    img = smooth(64, 80, seed=1)
    fake = Fake(offset=12, perfect=img)
    choice = choose_lr(fake, img, 8, fake.downscale(img, 8), effort=2)
    assert choice.kept.source == "model" and choice.kept.psnr == float("inf")


def test_effort_1_decodes_nothing_and_keeps_the_model_s() -> None:
    img = smooth(40, 48)
    fake = Fake(offset=12)
    own = fake.downscale(img, 8)
    choice = choose_lr(fake, img, 8, own, effort=1)
    assert fake.decodes == 0 and choice.kept.lr is own and choice.kept.psnr is None
    assert choice.describe() == "LR image kept: the model's own (no trial decode)"


def test_nothing_to_choose_decodes_nothing() -> None:
    img = smooth(40, 48)
    same = Fake(offset=0)  # its LR image is the bicubic one
    assert choose_lr(same, img, 8, same.downscale(img, 8)).tried[0].source == "model" and same.decodes == 0
    plain = choose_lr(BIC, img, 8, BIC.downscale(img, 8))
    assert len(plain.tried) == 1 and plain.kept.source == "bicubic"
    assert plain.describe() == "LR image kept: the bicubic downscale (no trial decode)"


def test_a_tie_keeps_the_model_s() -> None:
    img = smooth(40, 48)

    class Tie(Fake):
        def upscale(self, lr, scale, size):
            self.decodes += 1
            return np.zeros((size[1], size[0], 3), np.uint8)

    t = Tie(offset=5)
    assert choose_lr(t, img, 8, t.downscale(img, 8)).kept.source == "model" and t.decodes == 2


@pytest.mark.parametrize("bad", [0, 3, True, "2", 1.5, None])
def test_bad_efforts_are_refused(bad) -> None:
    with pytest.raises(ValueError, match="effort must be one of 1, 2"):
        check_effort(bad)
    assert [check_effort(e) for e in EFFORTS] == list(EFFORTS) and check_effort(np.int64(2)) == 2


# ------------------------------------------------------------------ with the micro TADM model


@pytest.fixture(scope="module")
def micro(tmp_path_factory) -> Path:
    from tadmcodec.tadm.testing import make_random_model_dir

    return make_random_model_dir(tmp_path_factory.mktemp("choice") / "x16", 16, seed=3, lr_projection=True)


def _codec(folder: Path):
    from tadmcodec.codec import Codec

    return Codec(device="cpu", model_dirs={"tadm-tiny-x16": folder})


def test_the_file_holds_the_kept_lr_image_and_decodes_to_its_trial(micro) -> None:
    codec = _codec(micro)
    img = smooth(72, 100, seed=4)
    enc = codec.encode_detailed(img, "tadm-tiny-x16", 16, effort=2)
    assert isinstance(enc.choice, Choice) and len(enc.choice.tried) == 2
    header = container.unpack(enc.data)
    lr = lrcodec.decode_lr(header.lr_codec, header.payload, *lr_size(100, 72, 16))
    assert np.array_equal(lr, enc.choice.kept.lr)
    out = codec.decode(enc.data).pixels
    mse = np.mean((out.astype(float) - img.astype(float)) ** 2)
    assert abs(10 * np.log10(255**2 / mse) - enc.choice.kept.psnr) < 1e-6  # the decoder is the trial's
    assert enc.choice.kept.psnr == max(c.psnr for c in enc.choice.tried)
    assert codec.encode(img, "tadm-tiny-x16", 16) == enc.data  # effort 2 is the default


def test_effort_1_stores_the_model_s_own_lr_image(micro) -> None:
    codec = _codec(micro)
    img = smooth(72, 100, seed=4)
    header = container.unpack(codec.encode(img, "tadm-tiny-x16", 16, effort=1))
    lr = lrcodec.decode_lr(header.lr_codec, header.payload, *lr_size(100, 72, 16))
    assert np.array_equal(lr, codec.rescaler(codec.spec("tadm-tiny-x16")).downscale(img, 16))


def test_api_and_pillow_take_the_effort(micro, tmp_path) -> None:
    from tadmcodec import api
    from tadmcodec.errors import InputError
    from tadmcodec.pillow import encode_pil

    img = smooth(48, 64, seed=5)
    with pytest.raises(InputError, match="effort must be one of 1, 2, got 7"):
        api.encode(img, "bicubic", 8, effort=7)
    one = api.encode(img, "tadm-tiny-x16", 16, effort=1, model_dir=micro, device="cpu")
    assert encode_pil(Image.fromarray(img), "tadm-tiny-x16", 16, effort=1, model_dir=micro, device="cpu") == one


TADM = [sys.executable, "-m", "tadmcodec"]


def test_cli_effort(micro, tmp_path) -> None:
    src = tmp_path / "a.png"
    Image.fromarray(smooth(48, 64, seed=6)).save(src)
    base = ["encode", str(src), "-m", "tadm-tiny-x16", "--model-dir", str(micro), "--device", "cpu"]
    p = subprocess.run([*TADM, *base, "-o", str(tmp_path / "a.tadm"), "-v"], capture_output=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert b"LR image kept: the " in p.stderr and b"trial decodes: model " in p.stderr
    p = subprocess.run([*TADM, *base, "-o", str(tmp_path / "b.tadm"), "-v", "-e", "1"], capture_output=True,
                       timeout=300)
    assert p.returncode == 0 and b"LR image kept: the model's own (no trial decode)" in p.stderr, p.stderr
    p = subprocess.run([*TADM, *base, "-o", str(tmp_path / "c.tadm"), "--effort", "3"], capture_output=True,
                       timeout=300)
    err = p.stderr.decode()
    assert p.returncode == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("tadm: ") and "effort" in err and not (tmp_path / "c.tadm").exists()


def test_ray_encode_refuses_a_bad_effort_before_starting_anything() -> None:
    from tadmcodec.distributed import encode_dataset
    from tadmcodec.errors import InputError

    with pytest.raises(InputError, match="effort must be one of 1, 2, got 0"):
        encode_dataset(None, "bicubic", 8, effort=0)  # checked before Ray is touched: no Dataset needed
