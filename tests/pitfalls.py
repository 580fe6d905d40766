"""Tiny models, each with one planted pitfall of feature extraction.

They double as examples of user models: ``conformance run --model tests/pitfalls.py:inplace_after_tap``.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import torch
from torch import nn

INPUT_SHAPE = (2, 3, 8, 8)


class InplaceAfterTap(nn.Module):
    """``bn`` is followed by an in-place ReLU, as in torchvision's ResNet stem."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.relu = nn.ReLU(inplace=True)
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.relu(self.bn(self.conv(x))))


class ReplacedEntry(nn.Module):
    """``head`` returns a dict whose ``mask`` the model replaces by an upsampled one after the
    call, as Mask R-CNN's ``transform.postprocess`` pastes ``roi_heads``' 28x28 masks into the image."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = DictHead()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.head(self.conv(x))
        out["mask"] = nn.functional.interpolate(out["mask"], scale_factor=2.0)
        return out["mask"]


class InplaceEntry(ReplacedEntry):
    """:class:`ReplacedEntry` that scales ``mask`` in place instead of replacing it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.head(self.conv(x))
        out["mask"].mul_(2.0)
        return out["mask"]


class DictHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 1, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"mask": self.conv(x).sigmoid()}


class FixedSizeInplaceAfterTap(InplaceAfterTap):
    """:class:`InplaceAfterTap` that takes 64x64 inputs only, as a ViT takes its image size only."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        torch._assert(x.shape[-1] == 64, "the model takes 64x64 inputs only")
        return super().forward(x)


class ReusedModule(nn.Module):
    """``act`` is called twice; its last call is the reference."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.act = nn.Tanh()
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv2(self.act(self.conv1(x))))


class ReorderedChildren(nn.Module):
    """Children are registered as ``second, first`` but run as ``first, second``."""

    def __init__(self) -> None:
        super().__init__()
        self.second = nn.Conv2d(4, 4, 3, padding=1)
        self.first = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.second(self.first(x)))


class ReorderedWithUnused(nn.Module):
    """Children registered as ``second, first`` but run as ``first, second``, and a child
    that never runs (an aux head left out in eval)."""

    def __init__(self) -> None:
        super().__init__()
        self.second = nn.Conv2d(4, 4, 3, padding=1)
        self.first = nn.Conv2d(3, 4, 3, padding=1)
        self.unused = nn.Conv2d(4, 4, 1)
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.second(self.first(x)))


class FunctionalBetween(nn.Module):
    """A functional op runs between two children; replaying the children skips it."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Conv2d(3, 4, 3, padding=1)
        self.second = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(torch.sigmoid(self.first(x)) * 2.0)


class DataDependentControlFlow(nn.Module):
    """A branch on a tensor's value, which symbolic tracing cannot follow."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Conv2d(3, 4, 3, padding=1)
        self.second = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.first(x)
        if x.sum() > 0:
            x = x * 2.0
        return self.second(x)


class ScaledPair(nn.Module):
    """Takes a keyword argument and returns a tuple, like attention blocks do."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor, scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.conv(x) * scale
        return y, y.mean(dim=(2, 3))


class KwargsAndTuples(nn.Module):
    """``block`` is called with a keyword argument and returns a tuple."""

    def __init__(self) -> None:
        super().__init__()
        self.block = ScaledPair()
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.block(x, scale=2.0)
        return self.head(y)


class SignBranch(nn.Module):
    """``branch`` runs only for inputs with a positive mean: for one of ``x`` and ``-x``."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Conv2d(3, 4, 3, padding=1)
        self.branch = nn.Conv2d(4, 4, 3, padding=1)
        self.second = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.first(x)
        if x.mean() > 0:
            h = self.branch(h)
        return self.second(h)


class DeadInplace(nn.Module):
    """An in-place op whose result is unused runs between two children (FX drops it as dead code)."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Conv2d(3, 4, 3, padding=1)
        self.second = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.first(x)
        x.mul_(2.0)
        return self.second(x)


def _accumulate(x: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
    """Adds ``shortcut`` into ``x`` in place, as torchvision MViT's ``_add_shortcut`` does."""
    x.add_(shortcut)
    return x


torch.fx.wrap("_accumulate")


class WrappedMutation(nn.Module):
    """A function FX keeps whole changes its argument in place, its result unused, in two places
    (as in MViT v2's residual pooling): FX drops both calls as dead code."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Conv2d(3, 4, 3, padding=1)
        self.second = nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Conv2d(4, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.first(x)
        h = self.second(shortcut)
        _accumulate(h, shortcut)
        _accumulate(h, shortcut)
        return self.head(h)


class DoublingConv(nn.Module):
    """A convolution whose output is doubled in place, the result of the in-place op unused."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        torch.relu_(h)
        return h


class InplaceInChild(nn.Module):
    """The unused in-place op runs inside a child: replaying the children keeps it; FX drops it
    unless a name inside the child is requested (then the op's node is an output, kept)."""

    def __init__(self) -> None:
        super().__init__()
        self.child = DoublingConv()
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.child(x))


class Scaled(nn.Module):
    """A convolution scaled by a keyword argument."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        return self.conv(x) * scale


class KeywordChild(nn.Module):
    """A child called with a keyword argument, returning a tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.block = Scaled()
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(x, scale=2.0))


class SizeTypeBranch(nn.Module):
    """Branches on the type of ``x.shape``: the op-level recorder's tracked sizes would take the
    other branch, so its pass must be refused and taken again without them."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Conv2d(3, 4, 3, padding=1)
        self.second = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.first(x)
        if type(h.shape) is torch.Size:
            h = h * 2.0
        return self.second(h)


class TrainOnlyBranch(nn.Module):
    """``aux`` and the add after it run in train mode only: the train and eval graphs differ."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Conv2d(3, 4, 3, padding=1)
        self.aux = nn.Conv2d(4, 4, 1)
        self.second = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.first(x)
        if self.training:
            h = h + self.aux(h)
        return self.second(h)


class ContainerEndsInNorm(nn.Module):
    """``block`` ends in a BatchNorm with fresh statistics: nearly the identity in eval mode,
    a real normalisation in train mode. FX binds one of ``block`` and ``block.0`` (the same
    node) to the node before it, which only train mode tells apart."""

    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)))
        self.head = nn.Conv2d(4, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(x))


class DropoutBetween(nn.Module):
    """A Dropout between two convolutions: in train mode, ``second`` depends on the RNG."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Conv2d(3, 4, 3, padding=1)
        self.drop = nn.Dropout(0.5)
        self.second = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.drop(self.first(x)))


class Plain(nn.Module):
    """No pitfall: every strategy that can express the request should pass."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Conv2d(3, 4, 3, padding=1)
        self.second = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(x))


class NeverCalled(nn.Module):
    """A ``ModuleList`` whose blocks run one by one: the list itself never runs (timm's ``blocks``)."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)])
        self.head = nn.Conv2d(4, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.head(x)


class FlattenBetween(nn.Module):
    """A classifier after ``torch.flatten``: replaying the children gives the Linear a 4-d map."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.features(x), 1))


class TwoBranchTokens(nn.Module):
    """A block returning a list of two token sequences (CrossViT): a class token and 16, and a class token and 4."""

    def __init__(self) -> None:
        super().__init__()
        self.small = nn.Conv2d(3, 8, 2, stride=2)
        self.large = nn.Conv2d(3, 12, 4, stride=4)
        self.cls_small = nn.Parameter(torch.randn(1, 1, 8))
        self.cls_large = nn.Parameter(torch.randn(1, 1, 12))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        small = torch.cat([self.cls_small.expand(x.shape[0], -1, -1), self.small(x).flatten(2).transpose(1, 2)], dim=1)
        large = torch.cat([self.cls_large.expand(x.shape[0], -1, -1), self.large(x).flatten(2).transpose(1, 2)], dim=1)
        return [small, large]


class CrossTokens(nn.Module):
    """A model whose ``block`` returns two token sequences."""

    def __init__(self) -> None:
        super().__init__()
        self.block = TwoBranchTokens()
        self.head = nn.Linear(8 + 12, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        small, large = self.block(x)
        return self.head(torch.cat([small[:, 0], large[:, 0]], dim=1))


class ChannelsLast(nn.Module):
    """``block`` returns a channels-last map (N, H, W, C), as MambaOut's and SAM2-Hiera's stages do."""

    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(x).permute(0, 2, 3, 1))


class PermutingStage(nn.Module):
    """A stage of channels-last blocks that permutes its output back to channels-first, as Swin's
    (``swinv2_cr``), NesT's and TinyViT's stages do."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class PermutedStages(nn.Module):
    """``stages`` and ``stages.0`` end in the same permute: FX binds one of the two names to the
    node before it, the blocks' channels-last output."""

    def __init__(self) -> None:
        super().__init__()
        self.stages = nn.Sequential(PermutingStage())
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(x))


class PatchTokens(nn.Module):
    """A 2x2-patch embedding returning tokens (N, H * W, C) with no class token."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, 6, 2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Tokens(nn.Module):
    """``block`` returns tokens (N, H * W, C) with no class token, as Hiera's blocks do."""

    def __init__(self) -> None:
        super().__init__()
        self.block = PatchTokens()
        self.head = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(x)).mean(1)


class PatchesAndSize(nn.Module):
    """Patches with their grid size, ``(tokens, torch.Size)``, as MViTv2's ``patch_embed`` returns them."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, 4, 2, stride=2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Size]:
        x = self.proj(x)
        return x.flatten(2).transpose(1, 2), x.shape[-2:]


class SizedPatches(nn.Module):
    """A model whose ``patch_embed`` returns a tensor and a ``torch.Size``."""

    def __init__(self) -> None:
        super().__init__()
        self.patch_embed = PatchesAndSize()
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens, (height, width) = self.patch_embed(x)
        return self.head(tokens.reshape(x.shape[0], height * width, -1).mean(1))


class LenOfInput(nn.Module):
    """Loops ``len(x)`` times: FX's ``Proxy`` has no length."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Conv2d(3, 4, 1)
        self.second = nn.Conv2d(4, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.first(x)
        return self.second(x) * len(x)


class OptionalMask(nn.Module):
    """``forward(x, mask=None)`` branches on ``mask is not None``, as Hiera's does: a trace that
    makes ``mask`` an input takes the masked branch."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Conv2d(3, 4, 1)
        self.second = nn.Conv2d(4, 4, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.first(x)
        if mask is not None:
            x = x * mask.view(x.shape[0], 1, 1, 1)
        return self.second(x)


class NoiseInEval(nn.Module):
    """Noise drawn in eval mode (a VAE-style sample): ``decode`` sees ``h + randn_like(h)``."""

    def __init__(self) -> None:
        super().__init__()
        self.encode = nn.Conv2d(3, 4, 3, padding=1)
        self.decode = nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.encode(x)
        return self.head(self.decode(h + torch.randn_like(h)))


class OwnGenerator(nn.Module):
    """Noise from a generator the model owns and advances on every call: the same global RNG
    state gives another value on the next call, so its true activation is no one value."""

    def __init__(self) -> None:
        super().__init__()
        self.encode = nn.Conv2d(3, 4, 3, padding=1)
        self.decode = nn.Conv2d(4, 4, 3, padding=1)
        self.generator = torch.Generator().manual_seed(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.encode(x)
        noise = torch.randn(h.shape, generator=self.generator).to(h.device)
        return self.decode(h + noise)


class Lazy(nn.Module):
    """Lazy modules: their parameters take shape on the first call."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.LazyConv2d(4, 3, padding=1)
        self.bn = nn.LazyBatchNorm2d()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.LazyLinear(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.bn(self.conv(x))).flatten(1))


class Attention(nn.Module):
    """An ``nn.MultiheadAttention`` child over the pixels as tokens, as in torchvision's ViT:
    ``attn`` returns a tuple (output, weights)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 8, 1)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x).flatten(2).transpose(1, 2)
        out, _ = self.attn(tokens, tokens, tokens)
        return self.head(out)


class ForwardCalled(nn.Module):
    """``block`` is run through ``self.block.forward(x)``: its ``__call__``, and so every hook,
    is bypassed while its ``forward`` runs."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Conv2d(3, 4, 3, padding=1)
        self.block = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.Tanh())
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block.forward(self.first(x)))


class ChainInplace(nn.Module):
    """A functional op between ``conv`` and an in-place ReLU child: the model's ReLU works on a
    new tensor, a replay of the children overwrites ``conv``'s own output."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.relu(self.conv(x) - 0.5))


class DeadThenInplace(nn.Module):
    """An unused in-place op on ``first``'s output (dead code to FX), then an in-place ReLU
    child on the same tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.first(x)
        h.sub_(0.5)
        return self.head(self.relu(h))


class PairWithMean(nn.Module):
    """A custom module returning a tuple: a map and its mean."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.conv(x)
        return h, h.mean()


class TupleBlock(nn.Module):
    """``block`` (:class:`PairWithMean`) returns a tuple; FX binds its name to its last node."""

    def __init__(self) -> None:
        super().__init__()
        self.block = PairWithMean()
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, mean = self.block(x)
        return self.head(h - mean)


class ActNorm(nn.Module):
    """Glow's ActNorm: its shift and scale are set from the first batch it sees."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.shift = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.scale = nn.Parameter(torch.ones(1, channels, 1, 1))
        self.initialized = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.initialized:
            with torch.no_grad():
                self.shift.copy_(-x.mean(dim=(0, 2, 3), keepdim=True))
                self.scale.copy_(1 / (x.std(dim=(0, 2, 3), keepdim=True) + 1e-6))
            self.initialized = True
        return (x + self.shift) * self.scale


class FirstCallInit(nn.Module):
    """An :class:`ActNorm` after a convolution: state set by the model's first call."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.norm = ActNorm(4)
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.conv(x)))


@dataclasses.dataclass
class BlockOutput:
    """A dataclass output, as Hugging Face's ``ModelOutput`` and many research models return."""

    features: torch.Tensor
    pooled: torch.Tensor
    attentions: torch.Tensor | None = None


class PooledPair(NamedTuple):
    map: torch.Tensor
    peak: torch.Tensor


class DataclassBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> BlockOutput:
        y = self.conv(x)
        return BlockOutput(y, y.mean((2, 3)))


class NamedTupleBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 1)

    def forward(self, x: torch.Tensor) -> PooledPair:
        y = self.conv(x)
        return PooledPair(y, y.amax((2, 3)))


class DictWithNone(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor | None]:
        return {"out": self.conv(x), "aux": None}


class StructuredOutputs(nn.Module):
    """Children returning a dataclass (with a ``None`` member), a named tuple and a dict with a ``None`` entry."""

    def __init__(self) -> None:
        super().__init__()
        self.first = DataclassBlock()
        self.second = NamedTupleBlock()
        self.third = DictWithNone()
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.third(self.second(self.first(x).features).map)["out"])


def _factory(cls: type[nn.Module]):
    def build() -> nn.Module:
        return cls()

    build.input_shape = INPUT_SHAPE
    build.__name__ = cls.__name__
    return build


inplace_after_tap = _factory(InplaceAfterTap)
replaced_entry = _factory(ReplacedEntry)
inplace_entry = _factory(InplaceEntry)
reused_module = _factory(ReusedModule)
reordered_children = _factory(ReorderedChildren)
reordered_with_unused = _factory(ReorderedWithUnused)
functional_between = _factory(FunctionalBetween)
data_dependent_control_flow = _factory(DataDependentControlFlow)
kwargs_and_tuples = _factory(KwargsAndTuples)
sign_branch = _factory(SignBranch)
plain = _factory(Plain)
dead_inplace = _factory(DeadInplace)
wrapped_mutation = _factory(WrappedMutation)
inplace_in_child = _factory(InplaceInChild)
keyword_child = _factory(KeywordChild)
size_type_branch = _factory(SizeTypeBranch)
train_only_branch = _factory(TrainOnlyBranch)
container_ends_in_norm = _factory(ContainerEndsInNorm)
never_called = _factory(NeverCalled)
flatten_between = _factory(FlattenBetween)
cross_tokens = _factory(CrossTokens)
channels_last = _factory(ChannelsLast)
permuted_stages = _factory(PermutedStages)
tokens = _factory(Tokens)
sized_patches = _factory(SizedPatches)
len_of_input = _factory(LenOfInput)
optional_mask = _factory(OptionalMask)
noise_in_eval = _factory(NoiseInEval)
own_generator = _factory(OwnGenerator)
lazy = _factory(Lazy)
attention = _factory(Attention)
forward_called = _factory(ForwardCalled)
chain_inplace = _factory(ChainInplace)
dead_then_inplace = _factory(DeadThenInplace)
tuple_block = _factory(TupleBlock)
first_call_init = _factory(FirstCallInit)
structured_outputs = _factory(StructuredOutputs)


def not_a_module() -> str:
    """A factory that returns the wrong thing, for the CLI's error path."""
    return "not a module"


def exits_the_process() -> nn.Module:
    """A model whose construction ends the process, as a crash in native code or the
    out-of-memory killer would: for the executors' isolation of a dead worker."""
    import os

    os._exit(3)


class Sleeps(nn.Module):
    """A model whose forward takes minutes: for what Ctrl-C does to a run that waits on it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        import time

        time.sleep(600)
        return self.conv(x)


sleeps = _factory(Sleeps)
