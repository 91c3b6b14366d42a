"""The DCGAN of Radford et al. (2016): only nn.Modules, no I/O, no optimizers, no ranks.

G maps z [B, nz] to images [B, 3, R, R] in [-1, 1]; D maps images to one logit per image (no Sigmoid:
the loss takes logits, which is also what autocast requires). Class-conditional variants (`model.conditional`) take
labels y [B] as a second argument: G(z, y), D(x, y); the unconditional nets are built and called exactly as before.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm

from flowergan.config import ModelConfig, class_names


def init_weights(m: nn.Module) -> None:
    """DCGAN init: conv weights N(0, 0.02), BatchNorm gamma N(1, 0.02) and beta 0."""
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(m.weight, 0.0, 0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.BatchNorm2d) and m.affine:  # conditional BatchNorm keeps its gains in embeddings
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


def _n_blocks(resolution: int) -> int:
    """Doublings from the 4x4 seed to the output: 4 for 64x64, 5 for 128x128."""
    n = int(math.log2(resolution)) - 2
    if 2 ** (n + 2) != resolution or n < 1:
        raise ValueError(f"resolution must be a power of two >= 8, got {resolution}")
    return n


UPSAMPLE = ("deconv", "resize-conv", "resize-conv-bilinear", "resize-conv-last", "deconv-blur", "deconv-blur-rc-last")
# The *-last modes: (the inner doublings, the RGB layer). Resize-conv for the RGB layer, whose uneven overlap is the
# one that lands on output pixels as a period-2 checkerboard; inside, Radford's deconvs or blurred ones (so the
# output itself is not low-passed). Every other mode uses one layer kind throughout.
RESIZE = {"resize-conv": "nearest", "resize-conv-bilinear": "bilinear"}  # the resize-conv modes and their resize
SPLIT_UPSAMPLE = {"resize-conv-last": ("deconv", "resize-conv"), "deconv-blur-rc-last": ("deconv-blur", "resize-conv")}


class Blur(nn.Module):
    """A fixed [1, 2, 1] x [1, 2, 1] / 16 low-pass on each channel, the FIR filter StyleGAN2 runs after every
    upsampling. Its response at the Nyquist frequency is 0, so the period-2 lattice a stride-2 transposed
    convolution draws cannot pass, while the layer keeps the transposed convolution's learning dynamics."""

    def __init__(self, channels: int):
        super().__init__()
        tap = torch.tensor([1.0, 2.0, 1.0])
        kernel = (tap[:, None] * tap[None, :]) / 16
        # Not persistent: a constant, so checkpoints and exports carry no extra tensor for it.
        self.kernel: torch.Tensor
        self.register_buffer("kernel", kernel.expand(channels, 1, 3, 3).clone(), persistent=False)
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Replicate padding: zero padding would darken a one-pixel frame around every image.
        x = nn.functional.pad(x, (1, 1, 1, 1), mode="replicate")
        return nn.functional.conv2d(x, self.kernel.to(x.dtype), groups=self.channels)

    def extra_repr(self) -> str:
        return f"channels={self.channels}"
CONDITIONAL = ("none", "concat", "projection")
G_EMBED = 50  # length of concat G's class embedding appended to z (the size Keras/PyTorch cDCGAN tutorials use)
# concat D's label map: one extra input channel holding a learned R x R picture per class (the cGAN tutorials' label
# channel). One channel because D's first convolution costs in proportion to its input channels (3 + 1: a third more
# for that layer only; a one-hot map of 102 Oxford classes would cost 35x it), a picture rather than a constant so
# that a single channel can still tell many classes apart.
D_LABEL_CHANNELS = 1


def _check_conditional(conditional: str, num_classes: int) -> None:
    if conditional not in CONDITIONAL:
        raise ValueError(f"conditional must be one of {CONDITIONAL}, got {conditional!r}")
    if conditional != "none" and num_classes < 2:
        raise ValueError(f"a conditional model needs num_classes >= 2 (model.num_classes), got {num_classes}")


def _labels(y: torch.Tensor | None) -> torch.Tensor:
    if y is None:
        raise ValueError("a conditional model needs class labels: call it as net(x, y)")
    return y


class ConditionalBatchNorm2d(nn.Module):
    """BatchNorm without its own affine, then a gain and a bias per class (de Vries et al. 2017; the conditional
    BN of Miyato & Koyama 2018's G), initialised as DCGAN initialises BatchNorm: gain N(1, 0.02), bias 0."""

    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, affine=False)
        self.gain = nn.Embedding(num_classes, channels)
        self.bias = nn.Embedding(num_classes, channels)
        nn.init.normal_(self.gain.weight, 1.0, 0.02)
        nn.init.zeros_(self.bias.weight)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # One fused multiply-add (bias + x_hat * gain): a separate * and + cost an extra pass over G's activations.
        return torch.addcmul(self.bias(y)[:, :, None, None], self.bn(x), self.gain(y)[:, :, None, None])


def _up(c_in: int, c_out: int, kernel: int, mode: str = "deconv") -> nn.Module:
    """One 2x upsampling layer. deconv: kernel 4, stride 2, padding 1 doubles (kernel 5 needs output_padding 1).
    resize-conv (Odena et al. 2016): a stride-2 transposed kernel of size 4 or 5 covers output pixels unevenly
    (alternately 1 and 2 or 2 and 3 taps per axis), which draws a checkerboard; nearest 2x then an odd,
    stride-1 kernel (3 for kernel 4, 5 for 5) covers every pixel alike. deconv-blur: Radford's deconv, then a
    fixed low-pass that removes what it draws at period 2 (StyleGAN2's upsampling). resize-conv-bilinear: the
    resize interpolates (Odena et al.'s other choice), so the convolution starts from smooth ramps, not from the
    2x2 blocks a nearest resize leaves that early samples show."""
    resize = RESIZE.get(mode)
    if resize:
        k = kernel - 1 if kernel % 2 == 0 else kernel
        return nn.Sequential(nn.Upsample(scale_factor=2, mode=resize),
                             nn.Conv2d(c_in, c_out, k, 1, k // 2, bias=False))
    if mode not in ("deconv", "deconv-blur"):
        raise ValueError(f"upsample must be one of {UPSAMPLE}, got {mode!r}")
    pad, out_pad = (1, 0) if kernel == 4 else (2, 1)
    deconv = nn.ConvTranspose2d(c_in, c_out, kernel, 2, pad, output_padding=out_pad, bias=False)
    return nn.Sequential(deconv, Blur(c_out)) if mode == "deconv-blur" else deconv


def _down(c_in: int, c_out: int, kernel: int) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel, 2, 1 if kernel == 4 else 2, bias=False)


class Generator(nn.Module):
    """z -> 4x4 -> ... -> resolution, BatchNorm + ReLU, Tanh output without BN; each doubling a transposed
    convolution (Radford's) or what `upsample` names (UPSAMPLE; `_up` says what each mode builds)."""

    def __init__(self, nz: int = 100, ngf: int = 64, resolution: int = 64, kernel: int = 4, nc: int = 3,
                 upsample: str = "deconv", num_classes: int = 0, conditional: str = "none"):
        super().__init__()
        _check_conditional(conditional, num_classes)
        self.nz = nz
        self.conditional = conditional
        self.num_classes = num_classes if conditional != "none" else 0  # 0: G(z) takes no labels
        self.class_names: list[str] = []  # label order; build_models fills them from model.class_names
        n = _n_blocks(resolution)
        ch = [ngf * 2 ** (n - 1 - i) for i in range(n)]  # 64²: 512, 256, 128, 64
        if conditional == "concat":  # cDCGAN: G's input is z with the class's learned embedding appended
            self.embed = nn.Embedding(num_classes, G_EMBED)
        z_len = nz + (G_EMBED if conditional == "concat" else 0)

        def bn(c: int) -> nn.Module:
            return ConditionalBatchNorm2d(c, num_classes) if conditional == "projection" else nn.BatchNorm2d(c)

        layers: list[nn.Module] = [
            nn.ConvTranspose2d(z_len, ch[0], 4, 1, 0, bias=False),  # 1x1 -> 4x4
            bn(ch[0]),
            nn.ReLU(True),
        ]
        inner, last = SPLIT_UPSAMPLE.get(upsample, (upsample, upsample))
        for c_in, c_out in zip(ch[:-1], ch[1:]):
            layers += [_up(c_in, c_out, kernel, inner), bn(c_out), nn.ReLU(True)]
        layers += [_up(ch[-1], nc, kernel, last), nn.Tanh()]
        self.main = nn.Sequential(*layers)
        self.apply(init_weights)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if z.dim() == 2:
            z = z[:, :, None, None]
        if self.conditional == "none":
            return self.main(z)
        y = _labels(y)
        if self.conditional == "concat":
            return self.main(torch.cat([z, self.embed(y)[:, :, None, None].to(z.dtype)], dim=1))
        x = z
        for layer in self.main:  # projection: each conditional BatchNorm reads the labels
            x = layer(x, y) if isinstance(layer, ConditionalBatchNorm2d) else layer(x)
        return x


class Pack(nn.Module):
    """PacGAN (Lin et al. 2018): m consecutive images [B, C, H, W] become one sample [B/m, m*C, H, W].

    D then judges the joint distribution of m samples, which penalises a G that repeats itself (mode collapse).
    """

    def __init__(self, m: int):
        super().__init__()
        self.m = m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.m == 1:
            return x
        B, C, H, W = x.shape
        if B % self.m:
            raise ValueError(f"a batch of {B} images does not pack into groups of {self.m} (model.d_pack)")
        return x.reshape(B // self.m, self.m * C, H, W)  # reshape: a channels_last input is not viewable

    def extra_repr(self) -> str:
        return f"m={self.m}"


class MinibatchStd(nn.Module):
    """Minibatch standard deviation (Karras et al. 2018, ProGAN): one more channel holding how much the samples
    of each group of `group` differ, so D can tell a G that draws too few kinds of flower from the data.

    The std of every feature over the group, averaged to one number per group and broadcast over H x W; computed
    in float32 because a variance in float16 under autocast loses the small differences that matter here.
    """

    def __init__(self, group: int):
        super().__init__()
        self.group = group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        g = min(self.group, B)  # as ProGAN: a batch smaller than a group is one group
        if B % g:
            raise ValueError(f"a batch of {B} does not split into groups of {g} (model.d_mbstd)")
        y = x.float().reshape(g, B // g, C, H, W)  # group j holds samples j, j + B/g, j + 2B/g, ...
        std = (y.var(dim=0, unbiased=False) + 1e-8).sqrt().mean(dim=(1, 2, 3))  # [B/g]
        channel = std.repeat(g)[:, None, None, None].expand(B, 1, H, W).to(x.dtype)
        return torch.cat([x, channel], dim=1)

    def extra_repr(self) -> str:
        return f"group={self.group}"


class Discriminator(nn.Module):
    """Strided convs with LeakyReLU(0.2), BN on all but the first block, one logit per image (per pack of
    `pack` images with PacGAN packing); with `mbstd` > 0 the head also sees the minibatch std-dev channel."""

    def __init__(self, ndf: int = 64, resolution: int = 64, kernel: int = 4, nc: int = 3, dropout: float = 0.0,
                 input_dropout: float = 0.0, head: str = "conv", spectral_norm: bool = False, pack: int = 1,
                 mbstd: int = 0, num_classes: int = 0, conditional: str = "none"):
        super().__init__()
        _check_conditional(conditional, num_classes)
        if conditional == "projection" and pack > 1:
            raise ValueError("a projection D needs one class per logit: it cannot pack images (model.d_pack)")
        self.conditional = conditional
        self.num_classes = num_classes if conditional != "none" else 0
        n = _n_blocks(resolution)
        ch = [ndf * 2**i for i in range(n)]  # 64²: 64, 128, 256, 512
        layers: list[nn.Module] = [Pack(pack)] if pack > 1 else []
        if input_dropout > 0:
            layers.append(nn.Dropout(input_dropout))
        # concat: the label map joins each image before packing, so a packed sample carries each image's class.
        c_in = (nc + (D_LABEL_CHANNELS if conditional == "concat" else 0)) * pack
        for i, c_out in enumerate(ch):
            layers.append(_down(c_in, c_out, kernel))
            if i > 0:
                layers.append(nn.BatchNorm2d(c_out))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            c_in = c_out
        self.features = nn.Sequential(*layers)  # [B, ndf * 2**(n-1), 4, 4]: the penultimate features
        stats: list[nn.Module] = [MinibatchStd(mbstd)] if mbstd > 0 else []
        c_head = c_in + (1 if mbstd > 0 else 0)
        if head == "conv":
            self.head = nn.Sequential(*stats, nn.Conv2d(c_head, 1, 4, 1, 0, bias=False), nn.Flatten())
        elif head == "dense":
            self.head = nn.Sequential(*stats, nn.Flatten(), nn.Linear(c_head * 16, 1))
        else:
            raise ValueError(f"head must be 'conv' or 'dense', got {head!r}")
        self.apply(init_weights)
        if conditional == "concat":
            self.embed = nn.Embedding(num_classes, D_LABEL_CHANNELS * resolution * resolution)
        elif conditional == "projection":  # embed(y) meets phi(x), the sum-pooled last features (Miyato & Koyama)
            self.embed = nn.Embedding(num_classes, c_in)
            nn.init.xavier_uniform_(self.embed.weight)  # as the paper's code initialises it
        if spectral_norm:
            for m in self.modules():
                if isinstance(m, (nn.Conv2d, nn.Linear, nn.Embedding)):  # Miyato & Koyama normalise embed(y) too
                    _spectral_norm(m)

    def phi(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The penultimate features [B, C, 4, 4] that the head reads (concat D: of x with its label channels)."""
        if self.conditional != "concat":
            return self.features(x)
        y = _labels(y)
        B, _, H, W = x.shape
        label_map = self.embed(y).view(B, D_LABEL_CHANNELS, H, W).to(x.dtype)
        if x.is_contiguous(memory_format=torch.channels_last):  # NHWC in, NHWC out: cat of mixed layouts copies
            label_map = label_map.contiguous(memory_format=torch.channels_last)
        return self.features(torch.cat([x, label_map], dim=1))

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if self.conditional == "none":
            return self.head(self.features(x)).view(-1)
        y = _labels(y)
        if self.conditional == "concat":
            return self.head(self.phi(x, y)).view(-1)
        h = self.features(x)
        phi = h.sum(dim=(2, 3)).float()  # global sum pooling, in fp32: a sum of 16 fp16 features can lose bits
        return self.head(h).view(-1).float() + (self.embed(y) * phi).sum(dim=1)


def build_models(cfg: ModelConfig) -> tuple[Generator, Discriminator]:
    """G and D as the model section describes them; G also carries the class names (`G.class_names`, [] when
    unconditional) that sampling by name reads."""
    G = Generator(cfg.nz, cfg.ngf, cfg.resolution, cfg.kernel, upsample=cfg.g_upsample, num_classes=cfg.num_classes,
                  conditional=cfg.conditional)
    D = Discriminator(cfg.ndf, cfg.resolution, cfg.kernel, dropout=cfg.d_dropout,
                      input_dropout=cfg.d_input_dropout, head=cfg.d_head, spectral_norm=cfg.spectral_norm,
                      pack=cfg.d_pack, mbstd=cfg.d_mbstd, num_classes=cfg.num_classes, conditional=cfg.conditional)
    G.class_names = class_names(cfg) if cfg.conditional != "none" else []
    return G, D
