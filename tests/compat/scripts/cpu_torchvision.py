"""Import before lightning, transformers or timm on a machine whose torchvision is a CUDA build beside
a CPU torch: the build's C ops cannot load (no libtorch_cuda), so importing torchvision fails with
"operator torchvision::nms does not exist" unless their schemas are declared first. Declared here
only when torchvision's extension really cannot load; a working torchvision is left alone."""

import glob
import importlib.util
import os

import torch

_lib = None
_spec = importlib.util.find_spec("torchvision")
if _spec is not None and _spec.origin:
    _ext = glob.glob(os.path.join(os.path.dirname(_spec.origin), "_C*.so"))
    try:
        if _ext:
            torch.ops.load_library(_ext[0])
    except OSError:
        _lib = torch.library.Library("torchvision", "FRAGMENT")  # kept: a dropped Library unregisters
        for _schema in ("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
                        "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"):
            try:
                _lib.define(_schema)
            except RuntimeError:  # already declared (imported twice)
                pass
