#!/usr/bin/env python
"""What the attention does: attention maps, injectivity, rank and effective receptive field.

    python tools/analyze.py attention --model inline_pvt_tiny --size 224 --block 0.0 1.0
    python tools/analyze.py injectivity --checkpoint work_dirs/demo_cls/checkpoints/last.ckpt \\
        --images data/demo/imagenet/val
    python tools/analyze.py rank --model inline_swin_tiny --size 112
    python tools/analyze.py erf --compare inline_swin_tiny inline_swin_tiny:attn_types=SSSS \\
        --size 512

Each writes PNG figures and a JSON of the numbers to --out (default work_dirs/analysis); see
`python tools/analyze.py SUBCOMMAND --help` and the README section *Analysis*.
"""

import sys
from pathlib import Path

try:
    from analysis.cli import main
except ModuleNotFoundError:  # a venv whose editable install predates `analysis` in setup.cfg
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from analysis.cli import main

if __name__ == "__main__":
    sys.exit(main())
