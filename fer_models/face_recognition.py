"""A frozen face-recognition network from a local ONNX file, differentiable in torch.

PF-ViT's orthogonality loss compares face-recognition features of two generated faces and needs the
gradient to flow through the recognition network back into the generator, so the network must run
in torch, not in onnxruntime. `onnx2torch` rebuilds the ONNX graph as a torch.fx module of ordinary
torch layers: the file is read as data (tensors and a graph of known operators); nothing in it runs
as Python code. ArcFace models (insightface's `w600k_r50.onnx` and the like: RGB, 112 px,
(x - 127.5) / 127.5) and an InceptionResnetV1 exported to ONNX (facenet: RGB, 160 px,
(x - 127.5) / 128) both load; the input size is read from the graph, the standardisation is
`mean` / `std` on 0..255 pixels.

Torch state dicts are not read: a state dict needs the architecture in code, and facenet-pytorch
(the InceptionResnetV1 one) pins an old torch; export such a model to ONNX once instead
(`torch.onnx.export(model, torch.zeros(1, 3, 160, 160), "facenet.onnx", opset_version=17, dynamo=False)`:
onnx2torch 1.5 converts operators up to opset 18, e.g. not opset 19's AveragePool).
"""

from __future__ import annotations

from pathlib import Path

import torch.nn.functional as F
from torch import Tensor, nn

ARCFACE_MEAN, ARCFACE_STD = 127.5, 127.5


class FaceRecognizer(nn.Module):
    """Frozen network: images in [0, 1] [B, 3, H, W] -> flattened identity features [B, F].

    Always in eval mode (its BatchNorms keep their statistics whatever `train()` is called with) and
    without trainable parameters; gradients still flow to its input.
    """

    def __init__(self, net: nn.Module, input_size: int, mean: float = ARCFACE_MEAN, std: float = ARCFACE_STD) -> None:
        super().__init__()
        self.net = net
        self.input_size = input_size
        self.mean, self.std = mean, std
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> FaceRecognizer:
        return self  # frozen: never leaves eval mode

    def forward(self, images: Tensor) -> Tensor:
        x = images.float()
        if x.shape[-2:] != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        out = self.net((x * 255.0 - self.mean) / self.std)
        return (out[0] if isinstance(out, (tuple, list)) else out).flatten(1)


def load_face_recognizer(path: str | Path, mean: float = ARCFACE_MEAN, std: float = ARCFACE_STD) -> FaceRecognizer:
    """The ONNX face-recognition network at `path`, frozen. A missing or unreadable file, or a graph
    without a fixed square image input, is one ValueError naming the file."""
    import onnx
    from onnx2torch import convert

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"face-recognition model {path} not found")
    if path.suffix.lower() != ".onnx":
        raise ValueError(f"face-recognition model {path}: expected an .onnx file (see fer_models/face_recognition.py)")
    try:
        model = onnx.load(str(path))
        dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
        net = convert(model)
    except Exception as err:  # onnx and onnx2torch raise many types for a bad file; all mean "cannot use it"
        raise ValueError(f"face-recognition model {path} cannot be loaded: {err}") from None
    if len(dims) != 4 or dims[1] != 3 or not dims[2] or dims[2] != dims[3]:
        raise ValueError(f"face-recognition model {path}: input shape {dims}, expected [B, 3, S, S]")
    return FaceRecognizer(net, dims[2], mean, std)


def orthogonality_loss(a: Tensor, b: Tensor, eps: float = 1e-8) -> Tensor:
    """Mean |cosine similarity| of paired feature rows: 0 when every pair is orthogonal, up to 1."""
    return F.cosine_similarity(a.float(), b.float(), dim=-1, eps=eps).abs().mean()
