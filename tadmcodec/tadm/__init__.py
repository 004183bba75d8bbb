"""TADM (Timestep-Aware Diffusion Model, ICCV 2025) in torch on diffusers + peft.

Modules: `dfrm` (Ge with pixel guidance, Gd, 8-bit quantiser), `inn` (affine
coupling blocks), `tpm` (time-step prediction), `scheduler` (hybrid fixed +
learned step), `lora` (peft adapters, merging), `tiling` (latent tiles and
tiled VAE/DFRM), `model` (TadmModel, used by training), `pipeline` (the codec
Rescaler), `spec` (model.json schema, torch-free), `loader` (load/save model
folders, `load_tadm`), `diffusers_import` (diffusers without transformers, peft
and accelerate, for the `tadm` command), `devices`, `testing` (random tiny model
folders), `backbone` (the tiny backbone the shipped models are trained on).

Importing this package does not import torch; the submodules do.
"""
