"""Finding faces for face restoration: RetinaFace, from the weights users already have.

A1111, Forge and ComfyUI's face restorers find faces with facexlib's RetinaFace and keep its weights
beside GFPGAN's (``detection_Resnet50_Final.pth``, or the small ``detection_mobilenet0.25_Final.pth``).
This is that network, written here for the CPU with torch alone (facexlib would bring OpenCV,
numba and a torchvision that cannot load beside our CPU torch), with module names matching those
files so they load as they are. It gives each face's box, score and five landmarks (eyes, nose,
mouth corners), which align the face for the restorer.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn
from torch.nn import functional as F

# The trained network's facts: anchors per level, the levels' strides, the box-coding variances, its
# input's channel means (BGR, 0-255 without scaling, as it was trained).
MIN_SIZES = ((16, 32), (64, 128), (256, 512))
STRIDES = (8, 16, 32)
VARIANCES = (0.1, 0.2)
BGR_MEAN = (104.0, 117.0, 123.0)
# Which backbone a weights file holds, told by a key only it has: (channels into the FPN, FPN width).
BACKBONES = {"body.layer2.0.conv1.weight": ("resnet50", (512, 1024, 2048), 256),
             "body.stage1.0.0.weight": ("mobilenet0.25", (64, 128, 256), 64)}
# A1111's thresholds: a face's score, the overlap at which two boxes are one face.
SCORE_THRESHOLD = 0.8
NMS_THRESHOLD = 0.4


def _conv_bn(cin: int, cout: int, stride: int = 1, leaky: float | None = 0.0, kernel: int = 3) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(cout)]
    if leaky is not None:
        layers.append(nn.LeakyReLU(leaky, inplace=True))
    return nn.Sequential(*layers)


def _conv_dw(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.BatchNorm2d(cin),
                         nn.LeakyReLU(0.1, inplace=True), nn.Conv2d(cin, cout, 1, 1, 0, bias=False),
                         nn.BatchNorm2d(cout), nn.LeakyReLU(0.1, inplace=True))


class MobileNetBody(nn.Module):
    """MobileNet-0.25's three stages (strides 8, 16, 32)."""

    def __init__(self):
        super().__init__()
        self.stage1 = nn.Sequential(_conv_bn(3, 8, 2, 0.1), _conv_dw(8, 16, 1), _conv_dw(16, 32, 2),
                                    _conv_dw(32, 32, 1), _conv_dw(32, 64, 2), _conv_dw(64, 64, 1))
        self.stage2 = nn.Sequential(_conv_dw(64, 128, 2), *[_conv_dw(128, 128, 1) for _ in range(5)])
        self.stage3 = nn.Sequential(_conv_dw(128, 256, 2), _conv_dw(256, 256, 1))

    def forward(self, x):
        c1 = self.stage1(x)
        c2 = self.stage2(c1)
        return c1, c2, self.stage3(c2)


class Bottleneck(nn.Module):
    """ResNet-50's block, stride on the 3x3 convolution (torchvision's layout, which the weights use)."""

    def __init__(self, cin: int, width: int, stride: int):
        super().__init__()
        cout = width * 4
        self.conv1, self.bn1 = nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width)
        self.conv3, self.bn3 = nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout)
        self.downsample = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                           if stride != 1 or cin != cout else None)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = F.relu(self.bn2(self.conv2(out)), inplace=True)
        out = self.bn3(self.conv3(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)), inplace=True)


class ResNetBody(nn.Module):
    """ResNet-50 up to its last stage; layers 2-4 (strides 8, 16, 32) feed the FPN."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64)
        cin, layers = 64, []
        for width, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
            layers.append(nn.Sequential(*[Bottleneck(cin if i == 0 else width * 4, width, stride if i == 0 else 1)
                                          for i in range(blocks)]))
            cin = width * 4
        self.layer1, self.layer2, self.layer3, self.layer4 = layers

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x)), inplace=True), 3, 2, 1)
        c2 = self.layer2(self.layer1(x))
        c3 = self.layer3(c2)
        return c2, c3, self.layer4(c3)


class FPN(nn.Module):
    def __init__(self, channels: tuple[int, int, int], width: int):
        super().__init__()
        leaky = 0.1 if width <= 64 else 0.0
        self.output1, self.output2, self.output3 = (_conv_bn(c, width, 1, leaky, kernel=1) for c in channels)
        self.merge1, self.merge2 = _conv_bn(width, width, 1, leaky), _conv_bn(width, width, 1, leaky)

    def forward(self, feats):
        o1, o2, o3 = self.output1(feats[0]), self.output2(feats[1]), self.output3(feats[2])
        o2 = self.merge2(o2 + F.interpolate(o3, size=o2.shape[-2:], mode="nearest"))
        o1 = self.merge1(o1 + F.interpolate(o2, size=o1.shape[-2:], mode="nearest"))
        return o1, o2, o3


class SSH(nn.Module):
    """The context module: 3x3, 5x5 and 7x7 receptive fields side by side."""

    def __init__(self, width: int):
        super().__init__()
        leaky = 0.1 if width <= 64 else 0.0
        self.conv3X3 = _conv_bn(width, width // 2, leaky=None)
        self.conv5X5_1 = _conv_bn(width, width // 4, leaky=leaky)
        self.conv5X5_2 = _conv_bn(width // 4, width // 4, leaky=None)
        self.conv7X7_2 = _conv_bn(width // 4, width // 4, leaky=leaky)
        self.conv7x7_3 = _conv_bn(width // 4, width // 4, leaky=None)

    def forward(self, x):
        five = self.conv5X5_1(x)
        seven = self.conv7X7_2(five)
        return F.relu(torch.cat([self.conv3X3(x), self.conv5X5_2(five), self.conv7x7_3(seven)], 1))


class _Head(nn.Module):
    def __init__(self, width: int, outputs: int):
        super().__init__()
        self.outputs = outputs
        self.conv1x1 = nn.Conv2d(width, 2 * outputs, 1)  # two anchors per position

    def forward(self, x):
        return self.conv1x1(x).permute(0, 2, 3, 1).reshape(x.shape[0], -1, self.outputs)


class RetinaFace(nn.Module):
    """The detector network: backbone, FPN, context modules, and per level the class (background,
    face), box and landmark heads."""

    def __init__(self, backbone: str):
        super().__init__()
        name, channels, width = next(v for v in BACKBONES.values() if v[0] == backbone)
        self.backbone = name
        self.body = ResNetBody() if name == "resnet50" else MobileNetBody()
        self.fpn = FPN(channels, width)
        self.ssh1, self.ssh2, self.ssh3 = SSH(width), SSH(width), SSH(width)
        self.ClassHead = nn.ModuleList(_Head(width, 2) for _ in range(3))  # noqa: N815  (the weights' names)
        self.BboxHead = nn.ModuleList(_Head(width, 4) for _ in range(3))  # noqa: N815
        self.LandmarkHead = nn.ModuleList(_Head(width, 10) for _ in range(3))  # noqa: N815

    def forward(self, x):
        feats = [ssh(f) for ssh, f in zip((self.ssh1, self.ssh2, self.ssh3), self.fpn(self.body(x)))]
        boxes = torch.cat([h(f) for h, f in zip(self.BboxHead, feats)], 1)
        scores = torch.cat([h(f) for h, f in zip(self.ClassHead, feats)], 1).softmax(-1)
        landmarks = torch.cat([h(f) for h, f in zip(self.LandmarkHead, feats)], 1)
        return boxes, scores, landmarks


def load_detector(state_dict: dict[str, torch.Tensor]) -> RetinaFace:
    """The detector whose weights ``state_dict`` holds (facexlib's files; a DataParallel ``module.``
    prefix is dropped); ValueError when they are not RetinaFace's."""
    state = {k.removeprefix("module."): v for k, v in state_dict.items()}
    kind = next((v[0] for key, v in BACKBONES.items() if key in state), None)
    if kind is None:
        raise ValueError("not a RetinaFace detector (detection_Resnet50_Final or detection_mobilenet0.25_Final)")
    net = RetinaFace(kind)
    net.load_state_dict(state, strict=False)  # the backbone's unused classifier (fc) is in some files
    missing = set(net.state_dict()) - set(state)
    if missing:
        raise ValueError(f"RetinaFace weights without {sorted(missing)[0]}")
    return net.eval()


def priors(height: int, width: int) -> torch.Tensor:
    """The anchors for an input of ``height`` x ``width``: (cx, cy, w, h) as fractions of its sides,
    in the order the heads emit them (level, row, column, anchor)."""
    out = []
    for sizes, stride in zip(MIN_SIZES, STRIDES):
        rows, cols = math.ceil(height / stride), math.ceil(width / stride)
        cy, cx = torch.meshgrid((torch.arange(rows) + 0.5) * stride / height,
                                (torch.arange(cols) + 0.5) * stride / width, indexing="ij")
        level = [torch.stack([cx, cy, torch.full_like(cx, s / width), torch.full_like(cy, s / height)], -1)
                 for s in sizes]
        out.append(torch.stack(level, 2).reshape(-1, 4))
    return torch.cat(out)


def nms(boxes: torch.Tensor, scores: torch.Tensor, threshold: float) -> list[int]:
    """Greedy non-maximum suppression: indices of the boxes kept, best first."""
    order = torch.sort(scores, descending=True, stable=True).indices  # ties: the first anchor
    areas = (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)
    keep = []
    while order.numel():
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        lo = torch.maximum(boxes[rest, :2], boxes[i, :2])
        hi = torch.minimum(boxes[rest, 2:], boxes[i, 2:])
        inter = (hi - lo).clamp(min=0).prod(1)
        order = rest[inter / (areas[rest] + areas[i] - inter) <= threshold]
    return keep


@dataclasses.dataclass(frozen=True)
class Face:
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in the image's pixels
    score: float
    landmarks: tuple[tuple[float, float], ...]  # left eye, right eye, nose, mouth left, mouth right


def decode(boxes, scores, landmarks, height: int, width: int, scale: float = 1.0) -> list[Face]:
    """The faces a forward pass found in an input of ``height`` x ``width`` that was the image times
    ``scale``: boxes and landmarks from the anchors, then the best of each overlapping group."""
    anchors = priors(height, width)
    boxes, landmarks, face = boxes[0].float(), landmarks[0].float(), scores[0, :, 1].float()
    centre = anchors[:, :2] + boxes[:, :2] * VARIANCES[0] * anchors[:, 2:]
    size = anchors[:, 2:] * torch.exp(boxes[:, 2:] * VARIANCES[1])
    corners = torch.cat([centre - size / 2, centre + size / 2], 1)
    points = anchors[:, None, :2] + landmarks.view(-1, 5, 2) * VARIANCES[0] * anchors[:, None, 2:]
    sides = torch.tensor([width, height], dtype=torch.float32) / scale
    found = face > SCORE_THRESHOLD
    corners, points, face = corners[found] * sides.repeat(2), points[found] * sides, face[found]
    return [Face(tuple(corners[i].tolist()), float(face[i]), tuple(tuple(p) for p in points[i].tolist()))
            for i in nms(corners, face, NMS_THRESHOLD)]


# The detector sees the image with its shorter side at 640 pixels (A1111's setting: small faces in a
# 512-pixel image are found), its longer side at most DETECT_MAX_SIDE so a 4096-pixel upscale costs
# no more than a 1600-pixel one.
DETECT_SHORT_SIDE = 640
DETECT_MAX_SIDE = 1600


@torch.inference_mode()
def detect(net: RetinaFace, rgb: torch.Tensor) -> list[Face]:
    """The faces in ``rgb`` (3 x H x W, uint8), best first, in its pixels."""
    _, h, w = rgb.shape
    scale = min(DETECT_SHORT_SIDE / min(h, w), DETECT_MAX_SIDE / max(h, w))
    x = rgb.flip(0).float()[None]  # BGR, as trained
    if abs(scale - 1) > 1e-3:
        x = F.interpolate(x, size=(max(1, round(h * scale)), max(1, round(w * scale))), mode="bilinear",
                          antialias=scale < 1, align_corners=False)
    x = x - torch.tensor(BGR_MEAN).view(1, 3, 1, 1)
    return decode(*net(x), x.shape[2], x.shape[3], scale)
