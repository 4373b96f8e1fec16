#!/usr/bin/env python
"""Convert a Lightning checkpoint of this project to the plain layout other tools load:

    python tools/convert_checkpoint.py work_dirs/x/checkpoints/last.ckpt model.pth \
        [--config-out model_config.py]         # detection / segmentation: mmengine layout
    python tools/convert_checkpoint.py cls.ckpt inline_swin_tiny.pth [--ema]  # timm layout

The detection / segmentation output loads in MMDetection's / MMSegmentation's own tools
(``tools/test.py CONFIG model.pth``), ``load_from`` and ``init_cfg``; the classifier output in
``timm.create_model(name, checkpoint_path=...)`` (see lightning_modules/convert.py).
"""

import argparse
import json

from lightning_modules.convert import convert_checkpoint

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", help="a .ckpt written by this project's training tools")
    ap.add_argument("out", help="the .pth file to write")
    ap.add_argument("--config-out", help="also write the training config (MM checkpoints)")
    ap.add_argument("--ema", action="store_true", help="the EMA weights (classification)")
    args = ap.parse_args()
    print(json.dumps(convert_checkpoint(args.checkpoint, args.out, args.ema, args.config_out)))
