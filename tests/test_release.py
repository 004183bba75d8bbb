"""The release rule (registry docstring, docs/models.md): users' files keep decoding after an upgrade.

A stable model is pinned to its digest; better weights ship under a new number and the superseded
ones stay as `<name>-n<number>`. Experimental weights may change, and their old files are refused
with a message that says so. Each test plays two releases with two `Registry` objects.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from tadmcodec import registry
from tadmcodec.codec import Codec
from tadmcodec.errors import ModelError
from tadmcodec.registry import ModelSpec, Registry, check_release_rules
from tadmcodec.tadm.testing import make_random_model_dir


def photo(w: int = 96, h: int = 64) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([x * 255 / w, y * 255 / h, 128 + 60 * np.sin(x / 5.0) * np.cos(y / 4.0)], axis=2)
    return np.clip(img, 0, 255).astype(np.uint8)


def spec_at(folder: Path, name: str, number: int, status: str, **kw) -> ModelSpec:
    base = ModelSpec(name=name, number=number, kind="tadm", scales=(16,), description="test",
                     weights_dir=lambda: folder, status=status, **kw)
    if status in ("stable", "retired") and "pinned_digest" not in kw:
        base = replace(base, pinned_digest=base.digest().hex())
    return base


BICUBIC = registry.get("bicubic")


def test_the_shipped_registry_keeps_the_rule() -> None:
    assert check_release_rules(registry.REGISTRY) == []
    # the default is stable or bicubic, never experimental
    for scale in (None, 8, 16, 32):
        assert registry.default_model(scale).status in ("stable", "builtin")


def test_a_file_made_with_release_n_decodes_with_release_n_plus_1(tmp_path: Path) -> None:
    # release N ships tadm-tiny-x16 as number 1, stable
    v1 = make_random_model_dir(tmp_path / "pkgN" / "tadm-tiny-x16", 16, seed=0)
    release_n = Registry((BICUBIC, spec_at(v1, "tadm-tiny-x16", 1, "stable")))
    assert check_release_rules(release_n) == []
    assert release_n.default_model(16).name == "tadm-tiny-x16"
    codec_n = Codec(device="cpu", models=release_n)
    data = codec_n.encode(photo(), model="tadm-tiny-x16")
    expected = codec_n.decode(data).pixels

    # release N+1: the old folder moves to tadm-tiny-x16-n1 (retired), new weights ship as number 7
    old = tmp_path / "pkgN1" / "tadm-tiny-x16-n1"
    shutil.copytree(v1, old)
    v2 = make_random_model_dir(tmp_path / "pkgN1" / "tadm-tiny-x16", 16, seed=1)
    release_n1 = Registry((
        BICUBIC,
        spec_at(old, "tadm-tiny-x16-n1", 1, "retired", superseded_by=7),
        spec_at(v2, "tadm-tiny-x16", 7, "stable"),
    ))
    assert check_release_rules(release_n1) == []
    codec_n1 = Codec(device="cpu", models=release_n1)
    dec = codec_n1.decode(data)
    assert dec.model.name == "tadm-tiny-x16-n1"
    assert np.array_equal(dec.pixels, expected)
    # new files use the new weights and number; the default moved on (retired is never the default)
    assert release_n1.default_model(16).number == 7
    new = codec_n1.encode(photo(), model="tadm-tiny-x16")
    assert codec_n1.decode(new).model.number == 7 and new != data


def test_weights_changed_under_a_stable_number_break_the_rule(tmp_path: Path) -> None:
    folder = make_random_model_dir(tmp_path / "m", 16, seed=0)
    stable = spec_at(folder, "tadm-tiny-x16", 1, "stable")
    make_random_model_dir(folder, 16, seed=3)  # overwritten in place: what the rule forbids
    problems = check_release_rules(Registry((BICUBIC, stable)))
    assert len(problems) == 1 and "differs from the pinned" in problems[0] and "new number" in problems[0]
    unpinned = replace(stable, pinned_digest="")
    assert "pinned digest" in check_release_rules(Registry((BICUBIC, unpinned)))[0]
    orphan = spec_at(folder, "x-n1", 1, "retired", superseded_by=9)
    assert any("successor" in p for p in check_release_rules(Registry((BICUBIC, orphan))))
    twice = Registry((BICUBIC, stable, replace(stable, name="other")))
    assert any("unique" in p for p in check_release_rules(twice))


def test_experimental_weights_may_change_and_old_files_are_refused_plainly(tmp_path: Path) -> None:
    folder = make_random_model_dir(tmp_path / "m", 16, seed=0)
    exp = spec_at(folder, "tadm-tiny-x16", 1, "experimental")
    reg = Registry((BICUBIC, exp))
    # shipped experimental weights must say what they fail
    assert any("release.json" in p for p in check_release_rules(reg))
    (folder / registry.RELEASE_FILE).write_text(json.dumps({"fails": "PSNR vs bicubic (12/30)"}))
    assert check_release_rules(reg) == []
    assert exp.status_line() == "experimental: fails PSNR vs bicubic (12/30)"
    # available, but never the default
    assert exp.availability()[0] and reg.default_model(16).name == "bicubic" and reg.default_model().name == "bicubic"
    data = Codec(device="cpu", models=reg).encode(photo(), model="tadm-tiny-x16")
    make_random_model_dir(folder, 16, seed=5)  # the next release's experimental weights
    with pytest.raises(ModelError, match="experimental weights change between releases"):
        Codec(device="cpu", models=reg).decode(data)


def test_models_command_says_experimental_and_what_fails(tmp_path: Path, monkeypatch) -> None:
    from click.testing import CliRunner

    from tadmcodec import cli

    folder = make_random_model_dir(tmp_path / "m", 16, seed=0)
    (folder / registry.RELEASE_FILE).write_text(json.dumps({"fails": "the default bar's PSNR term (3/30)"}))
    spec = replace(registry.get("tadm-tiny-x16"), weights_dir=lambda: folder, status="experimental",
                   pinned_digest="", headline_passes=(0, 0, 0))
    monkeypatch.setitem(registry.MODELS, "tadm-tiny-x16", spec)
    out = CliRunner().invoke(cli.main, ["models"]).output
    line = next(line for line in out.splitlines() if "fails" in line)
    assert "experimental: fails the default bar's PSNR term (3/30); runs only with -m tadm-tiny-x16" in line
    rows = [json.loads(r) for r in CliRunner().invoke(cli.main, ["models", "--json"]).output.splitlines()]
    row = next(r for r in rows if r["name"] == "tadm-tiny-x16")
    assert row["available"] and row["status"] == "experimental" and not row["default"]


def test_release_notes_that_state_another_status_break_the_rule(tmp_path: Path) -> None:
    folder = make_random_model_dir(tmp_path / "m", 16, seed=0)
    (folder / registry.RELEASE_FILE).write_text(json.dumps({"status": "experimental", "fails": "PSNR"}))
    stable = spec_at(folder, "tadm-tiny-x16", 1, "stable")
    problems = check_release_rules(Registry((BICUBIC, stable)))
    assert len(problems) == 1 and "says 'experimental', the registry 'stable'" in problems[0]


def test_the_shipped_defaults_follow_the_bars_when_the_weights_are_packaged() -> None:
    """Issue 16: with no -m/-s, the stable model nearest the headline bar (x32); -s 16 and -s 8 their stable models."""
    x8, x16, x32 = (registry.get(f"tadm-tiny-x{s}") for s in (8, 16, 32))
    if not all(spec.availability()[0] for spec in (x8, x16, x32)):
        pytest.skip("tadm-tiny-x8's, -x16's or -x32's weights are not packaged in this checkout")
    for spec in (x8, x16, x32):
        assert spec.status == "stable" and spec.release_notes().get("status") == "stable"
    # x8 has the most headline passes in all (14 against 9), all of them on PSNR; x32 is the only
    # one that beats the best classic file on any photo, so it stays the default
    assert sum(x8.headline_passes) > sum(x32.headline_passes) and x32.default_rank > x8.default_rank > x16.default_rank
    assert registry.default_model().name == "tadm-tiny-x32" and registry.default_model(32).name == "tadm-tiny-x32"
    assert registry.default_model(16).name == "tadm-tiny-x16"
    assert registry.default_model(8).name == "tadm-tiny-x8"
    # and `tadm models` says so
    from click.testing import CliRunner

    from tadmcodec import cli

    rows = {r["name"]: r for r in map(json.loads, CliRunner().invoke(cli.main, ["models", "--json"]).output.splitlines())}
    assert rows["tadm-tiny-x32"]["default"] and rows["tadm-tiny-x32"]["default_at"] == [32]
    assert not rows["tadm-tiny-x16"]["default"] and rows["tadm-tiny-x16"]["default_at"] == [16]
    assert not rows["tadm-tiny-x8"]["default"] and rows["tadm-tiny-x8"]["default_at"] == [8]
    assert rows["bicubic"]["default_at"] == []
    text = CliRunner().invoke(cli.main, ["models"]).output
    assert f"stable, weights digest {x32.pinned_digest} pinned; the default\n" in text
    assert f"stable, weights digest {x16.pinned_digest} pinned; the default with -s 16\n" in text
    assert f"stable, weights digest {x8.pinned_digest} pinned; the default with -s 8\n" in text


REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", [s.name for s in registry.REGISTRY.specs if s.status == "stable"])
def test_a_stable_models_ranking_is_its_committed_bar(name: str) -> None:
    """headline_passes, which picks the default, is what the bar in release.json measured at its scale."""
    spec = registry.get(name)
    if not spec.availability()[0]:
        pytest.skip(f"{name}'s weights are not packaged in this checkout")
    bar = json.loads((REPO / spec.release_notes()["bar"]).read_text())
    assert bar["scale"] == spec.scale and bar["model"].split("=")[0] == name
    s = bar["summary"]
    assert s["bars"]["default"]["passes"]
    terms = ("lpips_vs_classic", "dists_vs_classic", "psnr_margin_vs_bicubic")  # headline_passes' order
    assert tuple(s["images_passing"][t] for t in terms) == spec.headline_passes


def test_the_packaged_x8_is_stable_with_the_weights_its_bar_measured() -> None:
    """tadm-tiny-x8's second weights (number 7) beat number 5 on the bar in session 20 and replaced them."""
    spec = registry.get("tadm-tiny-x8")
    if not spec.availability()[0]:
        pytest.skip("tadm-tiny-x8's weights are not packaged in this checkout")
    notes = spec.release_notes()
    assert spec.number == 7 and spec.status == "stable" and notes["status"] == "stable" and "fails" not in notes
    bar = json.loads((REPO / notes["bar"]).read_text())
    assert bar["summary"]["bars"]["default"]["passes"] and not bar["summary"]["bars"]["headline"]["passes"]
    assert spec.digest().hex() == spec.pinned_digest == "4d2cdaa3"  # the folder the bar measured, byte for byte


GOLDEN = Path(__file__).resolve().parent / "golden"


UPGRADES = [
    # (golden file, model name, old number, old digest, new number); the old weights are `<name>-n<old number>`
    ("x16-number1-8ae8e53", "tadm-tiny-x16", 1, "81b8d2bd", 6),
    ("x8-number5-fb984f4", "tadm-tiny-x8", 5, "5dc856af", 7),
    ("x16-number6-fc2da9c", "tadm-tiny-x16", 6, "d26b6468", 8),
]


@pytest.mark.parametrize("stem,new_name,old_number,old_digest,new_number", UPGRADES)
def test_a_file_of_the_release_before_an_upgrade_decodes_the_same(
    stem: str, new_name: str, old_number: int, old_digest: str, new_number: int
) -> None:
    """Rule 2 played for real: a file made by the landed release before an upgrade decodes with this
    package, which ships the new number under the model's name and keeps the old one as `<name>-n<number>`.

    Made at the commit in the file's name with `api.encode(golden_image(), model=<the name then>)`
    (x16 number 1 in session 19, x8 in session 20, x16 number 6 in session 21); the PNG is that
    release's own decode of it. The tolerance is for another CPU's float rounding; the new weights
    decode the same file's latent differently.
    """
    from PIL import Image

    from tadmcodec import api, container

    old, current = registry.get(f"{new_name}-n{old_number}"), registry.get(new_name)
    if not (old.availability()[0] and current.availability()[0]):
        pytest.skip(f"the packaged {new_name} weights are not in this checkout")
    data = (GOLDEN / f"{stem}.tadm").read_bytes()
    header = container.unpack(data)
    assert (header.model_number, header.model_digest.hex()) == (old_number, old_digest)
    assert registry.by_number(old_number) is old and old.status == "retired"
    # the number that replaced it may itself be retired since (x16: 1 -> 6 -> 8)
    assert old.superseded_by == new_number and registry.by_number(new_number).name.startswith(new_name)
    want = np.asarray(Image.open(GOLDEN / f"{stem}-decoded.png")).astype(int)
    got = np.asarray(api.decode(data)).astype(int)
    assert got.shape == want.shape and np.abs(got - want).max() <= 3
    # and today's encoder writes the new number for the same photo
    assert container.unpack(api.encode(golden_image(), scale=current.scale)).model_number == current.number


def golden_image(w: int = 128, h: int = 96) -> np.ndarray:
    rng = np.random.default_rng(16)
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([x * 255 / w, y * 255 / h, 128 + 60 * np.sin(x / 7.0) * np.cos(y / 5.0)], axis=2)
    return np.clip(img + rng.normal(0, 6, (h, w, 3)), 0, 255).astype(np.uint8)


def test_the_default_is_the_stable_model_nearest_the_headline_bar(tmp_path: Path) -> None:
    a = make_random_model_dir(tmp_path / "a", 16, seed=0)
    b = make_random_model_dir(tmp_path / "b", 16, seed=1)
    first = replace(spec_at(a, "first", 1, "stable"), headline_passes=(1, 0, 1))
    second = replace(spec_at(b, "second", 2, "stable"), headline_passes=(1, 1, 0))
    assert Registry((BICUBIC, first, second)).default_model(16).name == "second"
    # passes against the classic codecs come first; PSNR passes only break their ties
    assert Registry((BICUBIC, first, replace(second, headline_passes=(0, 0, 30)))).default_model().name == "first"
    assert Registry((BICUBIC, first, replace(second, headline_passes=(0, 1, 2)))).default_model().name == "second"
    assert Registry((BICUBIC, first, replace(second, headline_passes=(0, 1, 1)))).default_model().name == "first"  # tie
    assert Registry((BICUBIC, first, replace(second, status="experimental"))).default_model(16).name == "first"
    assert Registry((BICUBIC, first)).default_model(32).name == "bicubic"


SHARED_BACKBONE = Path(__file__).resolve().parents[2] / "shared" / "checkpoints" / "stage0-tiny-cpu" / "export"


@pytest.mark.parametrize("name, config", [("tadm-tiny-x16", "tadm-tiny-x16-cpu.json"),
                                          ("tadm-tiny-x32", "tadm-tiny-x32-cpu.json"),
                                          ("tadm-tiny-x8", "tadm-tiny-x8-cpu-clean.json")])
def test_packaged_weights_are_enough_to_go_on_training(name: str, config: str) -> None:
    """`tadm train --init tadmcodec/weights/<model>` on a new machine: every trained tensor is there."""
    folder = registry.PACKAGE_WEIGHTS / name
    if not (folder / "model.json").is_file():
        pytest.skip(f"{name} has no packaged weights in this release")
    if not SHARED_BACKBONE.is_dir():
        pytest.skip("../shared (the stage-0 backbone the CPU config trains on) is absent")
    from tadmcodec.train import stages as S

    cfg = S.load_config(Path(S.__file__).parent / "configs" / config,
                        {"backbone": {"dir": str(SHARED_BACKBONE)}})
    model = S.build_training_model(cfg)
    state = S.read_trainable(folder)
    assert S.load_checkpoint_state(model, state, folder) == []  # nothing missing, nothing new
    assert set(state) == set(S.checkpoint_state(model))
    assert (folder / registry.RELEASE_FILE).is_file()
    assert sum(p.stat().st_size for p in folder.iterdir()) <= 25 * 2**20


WEIGHTS_NEXT = Path(__file__).resolve().parents[1] / "weights-next"


def _weights_next() -> list[Path]:
    return sorted(p.parent for p in WEIGHTS_NEXT.glob("*/trainable.safetensors"))


@pytest.mark.parametrize("folder", _weights_next() or [None], ids=lambda p: p.name if p else "none")
def test_weights_next_are_enough_to_go_on_training(folder: Path | None) -> None:
    """`tadm train --config <its config> --init weights-next/<model>/trainable.safetensors` on a new machine."""
    if folder is None:
        pytest.skip("no weights-next/<model>/trainable.safetensors in this checkout")
    if not SHARED_BACKBONE.is_dir():
        pytest.skip("../shared (the stage-0 backbone the CPU config trains on) is absent")
    from tadmcodec.train import stages as S

    notes = json.loads((folder / "next.json").read_text())
    root = WEIGHTS_NEXT.parent
    cfg = S.load_config(root / notes["config"], {"backbone": {"dir": str(SHARED_BACKBONE)}})
    assert cfg["name"] == notes["config_name"] and folder.name.startswith(f"tadm-tiny-x{cfg['scale']}")
    model = S.build_training_model(cfg)
    path = folder / "trainable.safetensors"
    state = S.read_trainable(path)
    assert S.load_checkpoint_state(model, state, path) == []  # nothing missing, nothing new
    assert set(state) == set(S.checkpoint_state(model))
    assert path.stat().st_size <= 25 * 2**20 and not (folder / "model.json").exists()  # not a model folder
