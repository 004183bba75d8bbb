"""tadmcodec: an extreme-ratio image codec built on TADM (ICCV 2025).

The encoder rescales a photo 8x/16x/32x into a tiny 8-bit image and stores it
losslessly in a `.tadm` container; the decoder restores full size through the
TADM upscaling path. Importing this package is cheap: torch is only imported by
the modules that run a neural network.
"""

__version__ = "0.1.0"
