"""``anyorder tokenize``: image folders / webdataset shards -> pretokenized codes for training.

``anyorder tokenize --tokenizer maskgit-vqgan-imagenet-f16-256.bin --data imagenet/train --out codes/``,
or under ``torchrun --nproc_per_node 8 -m anyorder.cli tokenize ...`` (each rank encodes its share).
"""

from __future__ import annotations

import argparse

from anyorder.cli.common import pick_device
from anyorder.data.augment import AUGMENTATIONS
from anyorder.data.pretokenize import DEFAULT_PART_SIZE, pretokenize
from anyorder.io.outputs import ensure_writable

__all__ = ["add_tokenize_command"]


def cmd_tokenize(args: argparse.Namespace) -> int:
    ensure_writable(args.out, folder=True, what="--out")  # before any image is read
    args.device = str(pick_device(args.device))
    meta = pretokenize(args.tokenizer, args.data, args.out, aug=args.aug, resolution=args.resolution,
                       batch_size=args.batch_size, device=args.device, workers=args.workers,
                       part_size=args.part_size, tokenizer_config=args.tokenizer_config, progress=not args.quiet)
    if not args.quiet:
        print(f"tokenize: {meta['N']} images x {meta['A']} views ({meta['augmentation']}) -> {args.out}/codes.npy "
              f"[{meta['N']}, {meta['A']}, {meta['grid'][0]}, {meta['grid'][1]}] {meta['codes']['dtype']}; "
              f"{meta['num_skipped']} file(s) skipped (listed in meta.json)")
    return 0


def add_tokenize_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tokenize", help="encode an image folder / webdataset shards into codes.npy for training",
                       description="Pretokenize images: SRC/<class>/<image> (class ids = sorted folder names, "
                                   "as torchvision's ImageFolder) or webdataset .tar shards (jpg/png + cls) -> "
                                   "DIR/codes.npy [N, A, h, w], labels.npy, classes.json, meta.json. Runs under "
                                   "torchrun too; a rerun resumes from the finished parts.")
    p.add_argument("--tokenizer", required=True, metavar="T",
                   help="official MaskGIT-VQGAN .bin / LlamaGen VQ .pt file, or a tokenizer / run folder")
    p.add_argument("--tokenizer-config", default=None, metavar="FILE",
                   help="the official tokenizer's config (JSON/YAML); default: shapes read off the weights, "
                        "released defaults for the rest")
    p.add_argument("--data", required=True, metavar="SRC",
                   help="image-folder tree, a .tar shard, a folder of .tar shards or a brace pattern")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--aug", choices=AUGMENTATIONS, default=None,
                   help="ten-crop: 1.1x ADM centre crop + TenCrop, 10 rows; adm: centre crop + flip, 2 rows; "
                        "none: centre crop, 1 row. Default: the tokenizer's official recipe: ten-crop for the "
                        "MaskGIT-VQGAN (RAR), adm for the LlamaGen VQ (RandAR's released checkpoints), "
                        "ten-crop for others")
    p.add_argument("--resolution", type=int, default=None, metavar="R",
                   help="image size fed to the tokenizer (a multiple of its downsampling; default: the "
                        "tokenizer's own, 256 for the official ones)")
    p.add_argument("--batch-size", type=int, default=8,
                   help="images per forward pass; the tokenizer sees batch-size x A views (default 8: 80 views "
                        "with ten-crop, as 1d-tokenizer's example command)")
    p.add_argument("--device", default="auto", help="auto (cuda:LOCAL_RANK if available, else cpu), cpu, cuda:0 ...")
    p.add_argument("--workers", type=int, default=None,
                   help="decoding threads (default min(8, CPUs)); 0 decodes in the main thread")
    p.add_argument("--part-size", type=int, default=DEFAULT_PART_SIZE,
                   help="images per part file (the unit of work and of resuming) for image folders")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_tokenize)
