"""Invertible building blocks that FrEIA does not ship, and the coupling subnetworks.

Every module here keeps FrEIA's contract: ``forward(x_tuple, rev=False, jac=True)`` returns
``(output_tuple, log|det J|)`` per sample, and ``rev=True`` returns the inverse and minus the log-det.

Mixed precision: under ``torch.autocast`` only the coupling subnetworks' convolutions run in bfloat16.
The flow's own path (the Haar wavelets, the affine coupling update and its log-det, the DCT) stays in
float32, because log p(x) sums hundreds of thousands of such terms: see ``float32``.
"""

from __future__ import annotations

import math

import torch
from FrEIA.modules import AllInOneBlock, HaarDownsampling, InvertibleModule
from torch import nn

__all__ = ["Normalize", "DCTPooling", "dct_matrix", "CouplingBlock", "Float32Haar", "ResNetSubnet",
           "BottleneckSubnet", "IBINNSubnet", "FCSubnet", "float32"]


def float32(x: torch.Tensor) -> tuple[torch.Tensor, torch.autocast]:
    """``x`` in float32 (float64 stays float64) and a context that switches autocast off on its device.

    Under bf16 autocast a matmul or convolution would round its float32 inputs to 8 mantissa bits; on
    the flow's main path that would round every latent, and for ImageNet ||z||^2 (about 1.5e5) to a
    multiple of 1024. The modules below run their arithmetic inside this context.

    Args:
        x: a tensor.

    Returns:
        ``(x_float, context)``; use as ``x, ctx = float32(x)`` then ``with ctx: ...``.
    """
    if x.dtype not in (torch.float32, torch.float64):
        x = x.float()
    return x, torch.autocast(device_type=x.device.type, enabled=False)


class Normalize(InvertibleModule):
    """Fixed per-channel affine map ``(x - mean) / std``; log|det J| = -H*W*sum(log std)."""

    def __init__(self, dims_in, dims_c=None, mean=(0.5,), std=(0.5,)):
        super().__init__(dims_in, dims_c or [])
        channels, *spatial = dims_in[0]
        if len(mean) != channels or len(std) != channels:
            raise ValueError(f"Normalize needs {channels} means and stds, got {mean} and {std}")
        shape = (1, channels) + (1,) * len(spatial)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(shape), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(shape), persistent=False)
        self._pixels = math.prod(spatial)

    def forward(self, x, c=None, rev=False, jac=True):
        x = x[0]
        log_det = -self._pixels * torch.log(self.std).sum()
        log_det = log_det.expand(x.shape[0])
        if rev:
            return (x * self.std + self.mean,), -log_det
        return ((x - self.mean) / self.std,), log_det

    def output_dims(self, input_dims):
        return input_dims


def dct_matrix(n: int, dtype=torch.float64) -> torch.Tensor:
    """Orthonormal DCT-II matrix ``D`` with ``D @ D.T = I``; row k is frequency k (row 0 = DC)."""
    k = torch.arange(n, dtype=dtype)[:, None]
    i = torch.arange(n, dtype=dtype)[None, :]
    d = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    d[0] /= math.sqrt(2.0)
    return d


class DCTPooling(InvertibleModule):
    """Orthogonal 2-D DCT-II of every channel, flattened with the DC terms first.

    Input ``[B, C, H, W]``, output ``[B, C*H*W]`` ordered by frequency: first the DC term of every
    channel, then the coefficients with ``u + v = 1`` of every channel, and so on (frequency-major,
    channel-minor). The transform is orthogonal and the reordering a permutation, so log|det J| = 0.
    This replaces the paper's ``torch.rfft`` implementation (gone from PyTorch, CUDA-only there) by a
    fixed ``HW x HW`` matrix: at the grid sizes it is used on (7x7, 4x4) a matmul is cheaper than FFT.
    """

    def __init__(self, dims_in, dims_c=None):
        super().__init__(dims_in, dims_c or [])
        channels, height, width = dims_in[0]
        self.shape = (channels, height, width)
        # Frequencies (u, v) sorted by u + v, then u: low frequencies first.
        order = sorted(((u, v) for u in range(height) for v in range(width)), key=lambda t: (t[0] + t[1], t[0]))
        index = torch.tensor([u * width + v for u, v in order])
        # Kept in float64 outside the state dict (it is fixed by the shape) and cast on use, so that a
        # float64 model gets an exactly orthogonal basis, not a rounded float32 one.
        self._basis64 = torch.kron(dct_matrix(height), dct_matrix(width))[index]  # [HW, HW], orthogonal
        self._cache: dict = {}

    def _basis(self, like: torch.Tensor) -> torch.Tensor:
        key = (like.device, like.dtype)
        if key not in self._cache:
            self._cache[key] = self._basis64.to(device=like.device, dtype=like.dtype)
        return self._cache[key]

    def forward(self, x, c=None, rev=False, jac=True):
        x, ctx = float32(x[0])
        with ctx:
            return self._forward(x, rev)

    def _forward(self, x, rev):
        channels, height, width = self.shape
        batch = x.shape[0]
        zero = x.new_zeros(batch)
        if not rev:
            coeffs = x.reshape(batch, channels, height * width) @ self._basis(x).T  # [B, C, HW]
            return (coeffs.transpose(1, 2).reshape(batch, -1),), zero
        coeffs = x.reshape(batch, height * width, channels).transpose(1, 2)  # [B, C, HW]
        return ((coeffs @ self._basis(x)).reshape(batch, channels, height, width),), zero

    def output_dims(self, input_dims):
        return [(math.prod(input_dims[0]),)]


class CouplingBlock(AllInOneBlock):
    """FrEIA's AllInOneBlock with the hard channel permutation done by indexing.

    With ``permute_soft=True`` the permutation is FrEIA's soft one: a fixed random orthogonal matrix
    (drawn with scipy's special_ortho_group from numpy's seeded state), applied as a 1x1 convolution,
    log|det| = 0. IB-INN uses it: with 4 or 16 channels a hard shuffle mixes little.

    FrEIA applies its fixed permutation as a 1x1 convolution with a permutation matrix, which on the CPU
    is a full oneDNN convolution call for a copy. Indexing gives identical outputs; in interleaved A/B
    runs on 2 cores (fashion-mnist model, batch 500) evaluation was about 15 % faster (medians 2,900 ->
    3,400 images/s), training unchanged. The matrix stays in the state dict (checkpoints keep FrEIA's
    layout); the index is derived from it, also after load_state_dict.
    """

    def __init__(self, dims_in, dims_c=None, **kwargs):
        if kwargs.get("learned_householder_permutation"):
            raise ValueError("CouplingBlock supports hard and soft permutations only; use FrEIA's AllInOneBlock")
        self._soft = bool(kwargs.get("permute_soft"))
        super().__init__(dims_in, dims_c or [], **kwargs)
        self.register_buffer("_perm", torch.zeros(self.in_channels, dtype=torch.long), persistent=False)
        self.register_buffer("_perm_inv", torch.zeros(self.in_channels, dtype=torch.long), persistent=False)
        self._refresh_permutation()
        self.register_load_state_dict_post_hook(lambda module, incompatible: module._refresh_permutation())

    def _refresh_permutation(self) -> None:
        if self._soft:
            return
        w = self.w_perm.detach().reshape(self.in_channels, self.in_channels)
        # F.conv2d(x, w)[:, i] = x[:, j] where w[i, j] = 1
        self._perm.copy_(w.argmax(1))
        self._perm_inv.copy_(w.argmax(0))

    def _affine(self, x, a, rev=False):
        # Under autocast the subnet's output is bfloat16: the coupling update and its log-det are computed
        # from it in float32 (for float32 inputs this is FrEIA's arithmetic unchanged).
        x, ctx = float32(x)
        with ctx:
            return super()._affine(x, a.to(x.dtype), rev)

    def _permute(self, x, rev=False):
        if self._soft:  # FrEIA's 1x1 convolution with the orthogonal matrix, in float32 (see float32)
            x, ctx = float32(x)
            with ctx:
                return super()._permute(x, rev)
        scale = self.global_scale_activation(self.global_scale)
        log_jac = torch.sum(torch.log(scale))
        if rev:
            return (_ChannelPermutation.apply(x, self._perm_inv, self._perm) - self.global_offset) / scale, log_jac
        return _ChannelPermutation.apply(x * scale + self.global_offset, self._perm, self._perm_inv), log_jac


class _ChannelPermutation(torch.autograd.Function):
    """``x[:, perm]`` whose gradient is the inverse permutation of the incoming gradient.

    Autograd's own backward of ``x[:, perm]`` is a scatter with accumulation (``index_put_``), which
    does not know that the index is a permutation: in the CPU profile of a Fashion-MNIST training step
    it took 5.5 % of the time, and in interleaved A/B runs (2 threads, batch 64) the gather made the
    step 1-12 % faster (medians 1,657 -> 1,838 and 1,945 -> 2,171 images/s; 1,382 -> 1,395 once).
    Outputs and gradients are bitwise the same (a permutation moves values, it adds nothing).
    """

    @staticmethod
    def forward(ctx, x, perm, perm_inv):
        ctx.save_for_backward(perm, perm_inv)
        return x.index_select(1, perm)

    @staticmethod
    def backward(ctx, grad):
        perm, perm_inv = ctx.saved_tensors
        return _ChannelPermutation.apply(grad, perm_inv, perm), None, None


class Float32Haar(HaarDownsampling):
    """FrEIA's ``HaarDownsampling`` computed in float32 also under autocast (see ``float32``).

    The wavelet is a strided convolution with weights +-1/2, which autocast would run in bfloat16 and so
    round the flow's whole activation. Same parameters and state dict as FrEIA's module.
    """

    def forward(self, x, c=None, jac=True, rev=False):
        x0, ctx = float32(x[0])
        with ctx:
            return super().forward((x0,), c=c, jac=jac, rev=rev)


def _zero_init(layer: nn.Conv2d) -> nn.Conv2d:
    # FrEIA's advice: the last layer of each subnet starts at zero, so every block starts as the identity.
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class _Residual(nn.Module):
    def __init__(self, *layers: nn.Module):
        super().__init__()
        self.body = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.body(x)


def _norm(width: int, batchnorm: bool) -> list[nn.Module]:
    return [nn.BatchNorm2d(width)] if batchnorm else []


def _dropout(p: float) -> list[nn.Module]:
    return [nn.Dropout2d(p)] if p > 0 else []


class ResNetSubnet(nn.Module):
    """Coupling subnetwork: 3x3 conv in, ``depth`` residual blocks (two 3x3 convs), 3x3 conv out (zero-init).

    ``batchnorm`` puts a BatchNorm after every hidden convolution, ``dropout`` a Dropout2d before the
    output convolution (both off by default: the small model has neither).
    """

    def __init__(self, channels_in: int, channels_out: int, width: int, depth: int = 1, batchnorm: bool = False,
                 dropout: float = 0.0):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(channels_in, width, 3, padding=1), *_norm(width, batchnorm)]
        for _ in range(depth):
            layers.append(
                _Residual(
                    nn.ReLU(),
                    nn.Conv2d(width, width, 3, padding=1),
                    *_norm(width, batchnorm),
                    nn.ReLU(),
                    nn.Conv2d(width, width, 3, padding=1),
                    *_norm(width, batchnorm),
                )
            )
        layers += [nn.ReLU(), *_dropout(dropout), _zero_init(nn.Conv2d(width, channels_out, 3, padding=1))]
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


class IBINNSubnet(nn.Module):
    """IB-INN's coupling subnetwork: conv3x3-[BN]-ReLU-conv3x3-[BN]-ReLU-[Dropout2d]-conv1x1 (zero-init).

    The shape of ``basic_residual_block`` in vislearn/IB-INN (inn_architecture.py); it has no skip
    connection of its own (the coupling's additive update is the skip). ``depth`` is accepted for a
    common constructor signature and must be 0 or 1.
    """

    def __init__(self, channels_in: int, channels_out: int, width: int, depth: int = 1, batchnorm: bool = False,
                 dropout: float = 0.0):
        super().__init__()
        if depth not in (0, 1):
            raise ValueError(f"IBINNSubnet has a fixed depth; subnet_depth must be 0 or 1, got {depth}")
        self.net = nn.Sequential(
            nn.Conv2d(channels_in, width, 3, padding=1, bias=not batchnorm), *_norm(width, batchnorm), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1, bias=not batchnorm), *_norm(width, batchnorm), nn.ReLU(),
            *_dropout(dropout),
            _zero_init(nn.Conv2d(width, channels_out, 1)),
        )

    def forward(self, x):
        return self.net(x)


class FCSubnet(nn.Module):
    """Subnetwork of the fully connected couplings: Linear-ReLU-Dropout-Linear (last layer zero-init).

    The output is float32 (or float64) also under autocast, so the coupling's update and log-det stay float32.
    """

    def __init__(self, dims_in: int, dims_out: int, width: int = 1024, dropout: float = 0.5):
        super().__init__()
        last = nn.Linear(width, dims_out)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.net = nn.Sequential(nn.Linear(dims_in, width), nn.ReLU(), *([nn.Dropout(dropout)] if dropout else []),
                                 last)

    def forward(self, x):
        out = self.net(x)
        return out if out.dtype in (torch.float32, torch.float64) else out.float()


class BottleneckSubnet(nn.Module):
    """Coupling subnetwork in the shape of a ResNet-50 bottleneck: 1x1 in, ``depth`` x 3x3 residual, 1x1 out."""

    def __init__(self, channels_in: int, channels_out: int, width: int, depth: int = 1, batchnorm: bool = False,
                 dropout: float = 0.0):
        super().__init__()
        if batchnorm or dropout:
            raise ValueError("BottleneckSubnet has no batchnorm/dropout options; use subnet='resnet' or 'ibinn'")
        layers: list[nn.Module] = [nn.Conv2d(channels_in, width, 1)]
        for _ in range(depth):
            layers.append(_Residual(nn.ReLU(), nn.Conv2d(width, width, 3, padding=1)))
        layers += [nn.ReLU(), _zero_init(nn.Conv2d(width, channels_out, 1))]
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)
