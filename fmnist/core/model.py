"""The FashionCNN family: three conv stages (28x28, 14x14, 7x7), channels doubling, built from hyper-parameters."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from fmnist.core.data import IMAGE_SIZE, NUM_CLASSES


@dataclass(frozen=True)
class ModelArgs:
    """Everything needed to rebuild the network; travels in the model record with the weights."""

    width: int = 16
    depth: int = 0
    dropout: float = 0.0
    num_classes: int = NUM_CLASSES
    # Score an image and its mirror and average their logits whenever the net is not training. Part of the network,
    # so that every path (evaluate, the ONNX graph the service runs, ScoreFlow) answers the same way.
    flip_tta: bool = False

    def to_dict(self) -> dict[str, float | int]:
        """Plain data, for artifacts and the model record."""
        return asdict(self)


def conv_bn(c_in: int, c_out: int) -> nn.Sequential:
    """3x3 convolution, batch norm, ReLU; the conv has no bias because batch norm supplies one."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class Residual(nn.Module):
    """Two conv_bn layers with an identity shortcut: depth without the vanishing gradient."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(conv_bn(channels, channels), conv_bn(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class FashionCNN(nn.Module):
    """Conv stages at 28, 14 and 7 pixels with width, 2*width and 4*width channels, max-pooled to a vector.

    `depth` residual blocks are added to every stage. Global max pooling keeps the head tiny and makes the
    network tolerant to the small shifts that augmentation teaches. With `flip_tta`, evaluation averages over the
    image and its left-right mirror (training sees mirrors as augmentation; the weights are the same either way).
    """

    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        w, d = args.width, args.depth
        self.args = args
        self.features = nn.Sequential(
            conv_bn(1, w),
            *(Residual(w) for _ in range(d)),
            nn.MaxPool2d(2),  # 28 -> 14
            conv_bn(w, 2 * w),
            *(Residual(2 * w) for _ in range(d)),
            nn.MaxPool2d(2),  # 14 -> 7
            conv_bn(2 * w, 4 * w),
            *(Residual(4 * w) for _ in range(d)),
            conv_bn(4 * w, 4 * w),
            nn.AdaptiveMaxPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Sequential(nn.Dropout(args.dropout), nn.Linear(4 * w, args.num_classes))

    @property
    def views(self) -> int:
        """How many views of an image a forward pass scores: 2 with flip averaging outside training, else 1."""
        return 2 if self.args.flip_tta and not self.training else 1

    def _with_mirrors(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, 28, 28) -> (V * B, 1, 28, 28): the images, then their mirrors when `views` is 2."""
        return torch.cat([x, x.flip(-1)]) if self.views == 2 else x

    def _view_mean(self, y: torch.Tensor) -> torch.Tensor:
        """(V * B, K) -> (B, K): the mean over the views of each image."""
        return y.reshape(2, -1, y.shape[-1]).mean(0) if self.views == 2 else y

    def _first_view(self, y: torch.Tensor) -> torch.Tensor:
        """(V * B, K) -> (B, K): the rows of the images as given, not their mirrors."""
        return y.reshape(2, -1, y.shape[-1])[0] if self.views == 2 else y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, 28, 28) normalised images -> (B, num_classes) logits."""
        return self._view_mean(self.head(self.features(self._with_mirrors(x))))

    def describe(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 1, 28, 28) normalised images -> ((B, D) descriptor, (B, num_classes) logits) in one pass.

        The descriptor is what "unlike the training images" is measured on: every conv block's activations averaged
        over the image (edges and textures at 28, 14 and 7 pixels) followed by the pooled vector the head reads.
        Low-level statistics are what give away a flat shape or a printed pattern that the last layer alone can
        mistake for a bag (the feature ensemble of Lee et al. 2018). With flip averaging the logits are averaged over
        the image and its mirror, and the descriptor is the image's own: an averaged descriptor blurs exactly those
        asymmetric statistics, and caught fewer real non-garments on the development sets (docs/benchmarks.md).
        """
        parts = []
        h = self._with_mirrors(x)  # (V * B, 1, 28, 28)
        for layer in self.features:
            h = layer(h)
            if isinstance(layer, nn.Sequential | Residual):  # a conv block's output, (V * B, C, H, W)
                parts.append(h.mean(dim=(2, 3)))  # (V * B, C)
        logits = self.head(h)  # h: (V * B, 4 * width) after pooling and flattening
        return self._first_view(torch.cat([*parts, h], dim=1)), self._view_mean(logits)


def build_model(args: ModelArgs) -> FashionCNN:
    """A freshly initialised network; seed torch first for reproducible weights."""
    return FashionCNN(args)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def normalize(images: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """(B, 28, 28) uint8 pixels -> (B, 1, 28, 28) float, scaled to [0, 1] then standardised."""
    x = images.reshape(-1, 1, IMAGE_SIZE, IMAGE_SIZE).float().div_(255.0)
    return x.sub_(mean).div_(std)
