"""Draw a net prototxt as a graph image (BVLC's ``python/draw_net.py``).

The output file's extension picks the format: ``.png``, ``.svg``, ``.pdf``... render through Graphviz's
``dot`` program; ``.dot``/``.gv`` write the graph source and need no Graphviz. Needs pydot
(``pip install 'caffelite[draw]'``).
"""

from __future__ import annotations


def add_arguments(parser):
    parser.add_argument("input_net_proto_file", help="net prototxt")
    parser.add_argument("output_image_file", help="image to write (.png, .svg, .pdf, .dot ...)")
    parser.add_argument("--rankdir", default="LR", choices=("LR", "TB", "BT", "RL"),
                        help="graph direction: LR (left to right, default), TB, BT or RL")
    parser.add_argument("--phase", default="ALL", choices=("TRAIN", "TEST", "ALL"),
                        help="draw only the layers of this phase (default ALL)")
    parser.add_argument("--display_lrm", action="store_true", help="show each layer's lr_mult")


def run(args) -> int:
    from .. import draw, io
    from ..layer import TEST, TRAIN

    net = io.read_net(args.input_net_proto_file)
    phase = {"TRAIN": TRAIN, "TEST": TEST, "ALL": None}[args.phase]
    print(f"Drawing net to {args.output_image_file}")
    draw.draw_net_to_file(net, args.output_image_file, args.rankdir, phase, args.display_lrm)
    return 0
