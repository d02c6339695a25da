"""Segment images, folders, list files or a video with a deploy net; write class-id PNGs and overlays.

Example: ``caffelite infer --model deploy.prototxt --weights W.caffemodel data/val-image-list.txt --out out --blend``
"""

from __future__ import annotations


def add_arguments(parser):
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="images, folders, list files or a video")
    parser.add_argument("--model", required=True, help="deploy prototxt")
    parser.add_argument("--weights", default="", help="caffemodel")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--resize", default="", help="WxH the image is resized to (must equal the net input)")
    parser.add_argument("--blend", action="store_true", help="also write chroma-blend colour overlays")
    parser.add_argument("--gpu", default=None, help="GPU id to run on")


def run(args) -> int:
    from .. import backend
    from ..segmentation.infer import Segmenter, run_inference
    from ..segmentation.sizes import parse_size

    if args.gpu not in (None, "", "-1"):
        backend.set_mode_gpu()
        backend.set_device(int(str(args.gpu).split(",")[0]))
    seg = Segmenter(args.model, args.weights or None, resize=parse_size(args.resize))
    written = run_inference(seg, args.inputs, args.out, blend=args.blend)
    print(f"wrote {len(written)} outputs to {args.out}")
    return 0
