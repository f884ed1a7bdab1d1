"""Rebuild the demo model that ships in the package (``src/quantcl/demo_model``).

    python scripts/build_demo_model.py [--out src/quantcl/demo_model]

Pretrains :data:`quantcl.models.DEMO_MODEL` (about a minute on a 2-core CPU) with
:func:`quantcl.models.build_demo_model` and writes the weights, tokenizer and a manifest with each
file's sha256 and the machine that made them. ``tests/test_demo.py`` rebuilds it and compares
with the shipped files (bit for bit on the machine that built them).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from quantcl.models import SHIPPED_DEMO_MODEL, build_demo_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(SHIPPED_DEMO_MODEL))
    out = Path(parser.parse_args().out)
    with tempfile.TemporaryDirectory() as tmp:
        built = build_demo_model(Path(tmp) / "model")
        if out.exists():
            shutil.rmtree(out)
        shutil.copytree(built, out)
    print(f"wrote {out}: " + ", ".join(sorted(p.name for p in out.iterdir())))


if __name__ == "__main__":
    main()
