"""Regenerate the golden `.tadm` files (run by hand only when the format changes on purpose).

    python tests/golden/make_golden.py

The golden files pin the container bytes. Their payloads come from this
machine's imagecodecs, but the tests never re-encode them: they check that the
files parse to GOLDEN_FIELDS, re-pack to the same bytes, and decode to
golden_lr() with today's libraries.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from tadmcodec import container, lrcodec  # noqa: E402
from golden_spec import GOLDEN, golden_lr  # noqa: E402


def main() -> None:
    lr = golden_lr()
    for name, fields in GOLDEN.items():
        payload = lrcodec._ENCODERS[fields["lr_codec"]](lr)  # the codec named, not auto
        f = container.TadmFile(payload=payload, **fields)
        data = container.pack(f)
        (HERE / name).write_bytes(data)
        print(f"{name}: {len(data)} bytes, payload {len(payload)}")


if __name__ == "__main__":
    main()
