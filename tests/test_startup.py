"""Start-up levers of issue 17 (behaviour, not timing; benchmarks/startup.py measures them).

- export merges the LoRA into the saved backbone, so loading needs no peft at all, and computes
  what the older adapter folder computes (which still loads, through peft);
- modules are built on the meta device and take the file's tensors: the same weights as a
  random init overwritten by the file, none left behind;
- `tadm --help`, `tadm models` and `tadm info` import no torch, and the optional commands are
  imported only when used, yet listed by --help and runnable;
- `tadm encode`/`decode` of a merged folder import no transformers, peft or accelerate (diffusers
  is imported without them, in the command's own process only) and give the same pixels; an
  adapter folder loaded after that in the same process still loads through peft.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from tadmcodec import cli, registry
from tadmcodec.errors import ModelError
from tadmcodec.tadm import spec as S
from tadmcodec.tadm.loader import build_model, load_model_dir, read_weights, save_model_dir
from tadmcodec.tadm.lora import has_lora
from tadmcodec.tadm.pipeline import TadmRescaler
from tadmcodec.tadm.testing import make_random_model

ROOT = Path(__file__).resolve().parent.parent
SIZE = (80, 48)


def run_python(code: str, *args: str) -> subprocess.CompletedProcess:
    """A fresh interpreter on this checkout (what a `tadm` call starts from)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=600)


def lr_image(seed: int = 0) -> np.ndarray:
    w, h = -(-SIZE[0] // 16), -(-SIZE[1] // 16)
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """The same random micro model saved merged (export's default) and with adapter files."""
    root = tmp_path_factory.mktemp("startup")
    model = make_random_model(16, seed=3)
    return {"merged": save_model_dir(root / "merged", model, fp32=True),
            "adapters": save_model_dir(root / "adapters", model, fp32=True, adapters=True)}


# ------------------------------------------------------------- LoRA merged at export


def test_merged_export_has_no_adapters_and_leaves_the_model_alone(tmp_path: Path) -> None:
    model = make_random_model(16, seed=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    d = save_model_dir(tmp_path / "m", model, fp32=True)
    names = {p.name for p in d.iterdir()}
    assert S.UNET_ADAPTER_FILE not in names and S.VAE_ADAPTER_FILE not in names
    cfg = S.read_config(d)
    assert cfg.lora_unet is None and cfg.lora_vae is None
    assert names == {"model.json", *S.required_files(cfg)}
    # the caller's training model keeps its adapters and weights (export may run mid-training)
    assert has_lora(model.unet) and has_lora(model.vae) and not model.lora_merged
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    # saving again over an adapter folder removes the stale adapter files (the digest hashes them)
    save_model_dir(tmp_path / "m", model, fp32=True, adapters=True)
    assert (tmp_path / "m" / S.UNET_ADAPTER_FILE).is_file()
    save_model_dir(tmp_path / "m", model, fp32=True)
    assert not (tmp_path / "m" / S.UNET_ADAPTER_FILE).exists()


def test_merged_and_adapter_folders_give_the_same_pixels(folders: dict[str, Path]) -> None:
    merged, adapters = (load_model_dir(folders[k]) for k in ("merged", "adapters"))
    assert not has_lora(merged.unet) and not has_lora(adapters.unet)  # the adapter folder merges on load
    a = TadmRescaler(merged).upscale(lr_image(), 16, SIZE).astype(int)
    b = TadmRescaler(adapters).upscale(lr_image(), 16, SIZE).astype(int)
    assert np.abs(a - b).max() <= 1 and np.mean(a != b) < 0.01
    z = torch.randn(1, 4, 6, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        za, ta = merged.enhance(z)
        zb, tb = adapters.enhance(z)
        assert torch.allclose(za, zb, atol=1e-4) and torch.allclose(ta, tb)


def test_a_loaded_model_saves_merged_but_not_as_adapters(folders: dict[str, Path], tmp_path: Path) -> None:
    loaded = load_model_dir(folders["adapters"])  # LoRA merged on load
    with pytest.raises(ModelError, match="merged"):
        save_model_dir(tmp_path / "a", loaded, fp32=True, adapters=True)
    d = save_model_dir(tmp_path / "m", loaded, fp32=True)
    for name in (S.UNET_FILE, S.VAE_FILE):
        assert read_weights(d / name).keys() == read_weights(folders["merged"] / name).keys()
        for k, v in read_weights(d / name).items():
            assert torch.allclose(v, read_weights(folders["merged"] / name)[k], atol=1e-6), k


def test_merged_folder_loads_with_peft_unimportable(folders: dict[str, Path], tmp_path: Path) -> None:
    """peft blocked outright (sys.modules[name] = None): the merged folder loads and decodes,
    the adapter folder needs peft. diffusers treats peft as optional and works without it."""
    out = tmp_path / "merged.npy"
    p = run_python("""
        import sys
        sys.modules["peft"] = None  # any import of peft now fails
        import numpy as np
        from tadmcodec import registry
        merged, adapters, out = sys.argv[1:4]
        spec = registry.get("tadm-tiny-x16")
        r = registry.load_rescaler(registry.with_weights_dir(spec, merged), device="cpu")
        w, h = 80, 48
        lr = np.random.default_rng(0).integers(0, 256, (3, 5, 3), dtype=np.uint8)
        np.save(out, r.upscale(lr, 16, (w, h)))
        assert "tadmcodec.tadm.lora" not in sys.modules
        try:
            registry.load_rescaler(registry.with_weights_dir(spec, adapters), device="cpu")
        except ImportError as exc:
            print("ADAPTERS NEED PEFT", "peft" in str(exc))
    """, str(folders["merged"]), str(folders["adapters"]), str(out))
    assert p.returncode == 0, p.stderr
    assert "ADAPTERS NEED PEFT True" in p.stdout
    here = TadmRescaler(load_model_dir(folders["adapters"])).upscale(lr_image(), 16, SIZE).astype(int)
    assert np.abs(np.load(out).astype(int) - here).max() <= 1


# ------------------------------------------------------------- meta device + assign


def test_meta_device_load_gives_identical_weights(folders: dict[str, Path]) -> None:
    d = folders["merged"]
    cfg = S.read_config(d)
    meta = build_model(cfg, d)
    # the way it was done before: a randomly initialised model, then the file copied over it
    ref = build_model(cfg, load_weights=False)
    files = {"vae": S.VAE_FILE, "unet": S.UNET_FILE, "dfrm": S.DFRM_FILE, "tpm": S.TPM_FILE,
             "refiner": S.REFINER_FILE}
    for attr, name in files.items():
        getattr(ref, attr).load_state_dict(read_weights(d / name), strict=True)
    got, want = meta.state_dict(), ref.state_dict()
    assert got.keys() == want.keys()
    for k, v in want.items():
        assert got[k].device.type == "cpu" and torch.equal(got[k], v), k
    for m in (meta.vae, meta.unet, meta.dfrm, meta.tpm, meta.refiner):
        assert not any(t.is_meta for t in [*m.parameters(), *m.buffers()])
    assert torch.equal(meta.prompt_embeds, read_weights(d / S.PROMPT_FILE)["prompt_embeds"].float())


def test_meta_device_load_names_a_tensor_the_file_lacks(folders: dict[str, Path], tmp_path: Path) -> None:
    from safetensors.torch import save_file

    d = tmp_path / "d"
    d.mkdir()
    for p in folders["merged"].iterdir():
        (d / p.name).write_bytes(p.read_bytes())
    state = read_weights(d / S.TPM_FILE)
    gone = sorted(state)[0]
    del state[gone]
    save_file(state, str(d / S.TPM_FILE))
    with pytest.raises(ModelError, match=gone.replace(".", r"\.")):
        load_model_dir(d)


# ------------------------------------------------------------- nothing heavy at import time


RUN_ENTRY = """
    import json, sys
    from tadmcodec.cli import entry
    for argv in json.loads(sys.argv[1]):
        sys.argv = ["tadm", *argv]
        try:
            entry()
        except SystemExit as exc:
            assert exc.code in (0, None), (argv, exc.code)
"""
"""Runs each `tadm ARGV` of argv[1] (a JSON list) through the console entry, in this one process."""

CLI_PROBE = RUN_ENTRY + """
    heavy = ("torch", "diffusers", "peft", "transformers", "accelerate", "numpy", "PIL")
    print("MODULES " + json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in heavy
                                          or m.startswith("tadmcodec.cli_"))))
"""


def _modules_after(*commands: list[str]) -> list[str]:
    p = run_python(CLI_PROBE, json.dumps(list(commands)))
    assert p.returncode == 0, p.stderr
    line = next(x for x in p.stdout.splitlines() if x.startswith("MODULES "))
    return json.loads(line[len("MODULES "):])


def test_info_models_and_help_import_no_torch(tmp_path: Path) -> None:
    """Nor numpy or Pillow: the registry, the container and the size arithmetic are free of both."""
    from tadmcodec.codec import Codec

    photo = np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    f = tmp_path / "a.tadm"
    f.write_bytes(Codec().encode(photo, model="bicubic", scale=16))
    # info and models do not even import the optional command modules
    assert _modules_after(["info", str(f)], ["models"], ["info", "--json", str(f)]) == []
    # --help imports those (they are light: click only) to print their one-line help, still no torch
    mods = _modules_after(["--help"], ["models", "--json"])
    assert not any(m.split(".")[0] in ("torch", "diffusers", "peft", "numpy", "PIL") for m in mods), mods
    assert {"tadmcodec.cli_bench", "tadmcodec.cli_import", "tadmcodec.cli_train"} <= set(mods)
    # all three in one process, on a golden file too
    golden = Path(__file__).resolve().parent / "golden" / "small-jxl-metadata.tadm"
    mods = _modules_after(["--help"], ["models"], ["info", str(golden)])
    assert not any(m.split(".")[0] in ("torch", "numpy", "PIL") for m in mods), mods


def test_registry_builds_bicubic_and_keeps_its_names() -> None:
    """The rescaler module (numpy, Pillow) is imported when a rescaler is built; the registry's
    names for it still resolve, to the same objects."""
    from tadmcodec import codec, rescaler, sizes

    assert registry.BicubicRescaler is rescaler.BicubicRescaler and registry.Rescaler is rescaler.Rescaler
    assert registry.SCALES is rescaler.SCALES is sizes.SCALES and rescaler.lr_size is sizes.lr_size
    assert codec.bits_per_pixel is sizes.bits_per_pixel
    assert isinstance(registry.load_rescaler(registry.get("bicubic")), rescaler.BicubicRescaler)
    with pytest.raises(AttributeError):
        registry.no_such_name  # noqa: B018


def test_lazy_commands_are_listed_and_run() -> None:
    runner = CliRunner()
    out = runner.invoke(cli.main, ["--help"]).output
    for name in ("bench", "demo", "import-official", "train", "encode", "decode", "info", "models"):
        assert f"  {name} " in out, name
    r = runner.invoke(cli.main, ["train", "--help"])
    assert r.exit_code == 0 and "--save-weights" in r.output
    r = runner.invoke(cli.main, ["import-official", "--help"])
    assert r.exit_code == 0 and "--base-model" in r.output


def test_a_missing_optional_module_is_not_listed(monkeypatch) -> None:
    monkeypatch.setitem(cli.main.lazy_commands, "nowhere", ("tadmcodec.cli_nowhere", "command"))
    runner = CliRunner()
    assert "nowhere" not in runner.invoke(cli.main, ["--help"]).output
    r = runner.invoke(cli.main, ["nowhere"])
    assert r.exit_code != 0 and "No such command" in r.output


def test_registry_still_loads_merged_folders(folders: dict[str, Path]) -> None:
    spec = registry.with_weights_dir(registry.get("tadm-tiny-x16"), folders["merged"])
    assert spec.availability() == (True, str(folders["merged"]))
    r = registry.load_rescaler(spec, device="cpu")
    assert r.upscale(lr_image(), 16, SIZE).shape == (SIZE[1], SIZE[0], 3)


# ------------------------------------------------------------- diffusers without its optional imports


OPTIONAL = ("transformers", "peft", "accelerate")

ENTRY_PROBE = RUN_ENTRY + """
    from diffusers.utils import import_utils
    print("STATE " + json.dumps({
        "modules": sorted({m.split(".")[0] for m in sys.modules} & {"torch", "diffusers", *%r}),
        "lora": "tadmcodec.tadm.lora" in sys.modules,
        "peft_available": import_utils.is_peft_available()}))
""" % (OPTIONAL,)


def _entry_state(*commands: list[str]) -> dict:
    """Run `tadm ARGV` commands in one fresh process through the console entry; what it imported."""
    p = run_python(ENTRY_PROBE, json.dumps(list(commands)))
    assert p.returncode == 0, p.stderr
    return json.loads(next(x for x in p.stdout.splitlines() if x.startswith("STATE "))[len("STATE "):])


@pytest.fixture(scope="module")
def coded(folders: dict[str, Path], tmp_path_factory) -> dict[str, Path]:
    """A photo, and its .tadm from each folder (encoded in this process, through `main`)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("coded")
    png = root / "a.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (SIZE[1], SIZE[0], 3), dtype=np.uint8)).save(png)
    out = {"png": png}
    for kind in ("merged", "adapters"):
        out[kind] = root / f"{kind}.tadm"
        r = CliRunner().invoke(cli.main, ["encode", str(png), "-m", "tadm-tiny-x16", "--model-dir", str(folders[kind]),
                                          "--device", "cpu", "-q", "-o", str(out[kind])])
        assert r.exit_code == 0, r.output
    return out


def _decoded(path: Path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path)).astype(int)


def test_cli_decode_of_a_merged_folder_imports_no_transformers_peft_or_accelerate(
        folders: dict[str, Path], coded: dict[str, Path], tmp_path: Path) -> None:
    here, there = tmp_path / "here.png", tmp_path / "there.png"
    argv = ["decode", str(coded["merged"]), "--model-dir", str(folders["merged"]), "--device", "cpu", "-q"]
    state = _entry_state([*argv, "-o", str(there)])
    assert state["modules"] == ["diffusers", "torch"], state  # loaded the model, without the three
    assert not state["lora"] and not state["peft_available"]
    # this process imported diffusers in full (CliRunner runs `main`, not the console entry)
    r = CliRunner().invoke(cli.main, [*argv, "-o", str(here)])
    assert r.exit_code == 0, r.output
    assert np.array_equal(_decoded(there), _decoded(here))


def test_an_adapter_folder_still_loads_through_peft_after_a_merged_one(
        folders: dict[str, Path], coded: dict[str, Path], tmp_path: Path) -> None:
    here, there = tmp_path / "here.png", tmp_path / "there.png"
    argv = ["decode", str(coded["adapters"]), "--model-dir", str(folders["adapters"]), "--device", "cpu", "-q"]
    state = _entry_state(["encode", str(coded["png"]), "-m", "tadm-tiny-x16", "--model-dir", str(folders["merged"]),
                          "--device", "cpu", "-q", "-o", str(tmp_path / "m.tadm")],
                         [*argv, "-o", str(there)])
    assert state["lora"] and "peft" in state["modules"], state  # peft imported as usual, for the adapters
    assert not state["peft_available"]  # diffusers keeps its first decision (so: the command's process only)
    r = CliRunner().invoke(cli.main, [*argv, "-o", str(here)])
    assert r.exit_code == 0, r.output
    assert np.array_equal(_decoded(there), _decoded(here))


def test_library_loads_and_adapter_folders_import_diffusers_as_is(folders: dict[str, Path],
                                                                   coded: dict[str, Path], tmp_path: Path) -> None:
    """Only the console entry's encode/decode of a folder without adapters leave the three out:
    a library caller's process keeps diffusers whole, and so does a first load of adapters."""
    p = run_python("""
        import sys
        from tadmcodec import registry
        spec = registry.with_weights_dir(registry.get("tadm-tiny-x16"), sys.argv[1])
        registry.load_rescaler(spec, device="cpu")
        from diffusers.utils import import_utils
        print("PEFT AVAILABLE", import_utils.is_peft_available())
    """, str(folders["merged"]))
    assert p.returncode == 0, p.stderr
    assert "PEFT AVAILABLE True" in p.stdout
    state = _entry_state(["decode", str(coded["adapters"]), "--model-dir", str(folders["adapters"]),
                          "--device", "cpu", "-q", "-o", str(tmp_path / "a.png")])
    assert state["peft_available"] and set(OPTIONAL) <= set(state["modules"]), state
