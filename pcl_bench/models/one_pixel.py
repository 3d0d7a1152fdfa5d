"""Convolutions whose output is a single pixel, computed as one matrix product.

When a convolution's output map is 1 x 1, the output is a linear function of the input window that the kernel
covers: y = x[:, :, :h, :w] . W[:, :, p_h:p_h + h, p_w:p_w + w] (summed over channels and the window), where
the kernel taps outside that window meet zero padding. ResNet's last stage gives 1 x 1 outputs for 32 px inputs
with the ImageNet stem (its 3x3 convolutions on 1 x 1 maps, and the stride-2 entry convolution and shortcut on
2 x 2 maps), and there oneDNN's convolution, its backward above all, costs several times the equivalent matrix
product on a CPU (``benchmarks/cpu_fast_paths.py``). :class:`OnePixelConv2d` computes those cases with
``F.linear`` and is an ordinary ``nn.Conv2d`` on every other input: same parameters, state_dict keys, outputs
and gradients up to float rounding (the taps that meet padding get the zero gradient the convolution gives them).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class _OnePixel(torch.autograd.Function):
    """(N, C, H, W) input, (O, C, kh, kw) weight, window (p_h, p_w, h, w) -> (N, O, 1, 1) as one matrix product.

    Written out because autograd's backward of the two weight slices would zero and copy the whole weight twice."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, window: tuple[int, int, int, int]) -> torch.Tensor:
        ph, pw, h, w = window
        x2d = x[:, :, :h, :w].flatten(1).contiguous()  # (N, C h w)
        w2d = weight[:, :, ph:ph + h, pw:pw + w].flatten(1).contiguous()  # (O, C h w); strided slows the GEMMs
        ctx.save_for_backward(x2d, w2d)
        ctx.x_shape, ctx.weight_shape, ctx.window = x.shape, weight.shape, window
        return F.linear(x2d, w2d)[:, :, None, None]

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x2d, w2d = ctx.saved_tensors
        ph, pw, h, w = ctx.window
        grad = grad.flatten(1)  # (N, O)
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = grad.new_zeros(ctx.x_shape)
            grad_x[:, :, :h, :w] = (grad @ w2d).view(-1, ctx.x_shape[1], h, w)
        if ctx.needs_input_grad[1]:
            grad_w = grad.new_zeros(ctx.weight_shape)
            grad_w[:, :, ph:ph + h, pw:pw + w] = (grad.T @ x2d).view(*ctx.weight_shape[:2], h, w)
        return grad_x, grad_w, None


class OnePixelConv2d(nn.Conv2d):
    """``nn.Conv2d`` that computes 1 x 1 outputs as a matrix product (exact; see the module docstring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        window = self._window(*x.shape[-2:])
        if window is None:
            return super().forward(x)
        y = _OnePixel.apply(x, self.weight, (*self.padding, *window))
        return y if self.bias is None else y + self.bias[:, None, None]

    def _window(self, height: int, width: int) -> tuple[int, int] | None:
        """(h, w) of the input window that meets the kernel when the output is one pixel, else None."""
        if self.groups != 1 or self.dilation != (1, 1) or self.padding_mode != "zeros" or isinstance(self.padding, str):
            return None
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        if (height + 2 * ph - kh) // sh != 0 or (width + 2 * pw - kw) // sw != 0:
            return None  # more than one output pixel
        return min(height, kh - ph), min(width, kw - pw)


def use_one_pixel(net: nn.Module) -> nn.Module:
    """Replace, in place, every plain ``nn.Conv2d`` of ``net`` by an :class:`OnePixelConv2d` sharing its
    parameters; returns ``net``."""
    for parent in list(net.modules()):
        for name, conv in parent.named_children():
            if type(conv) is nn.Conv2d:
                fast = OnePixelConv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                                      conv.padding, conv.dilation, conv.groups, conv.bias is not None,
                                      conv.padding_mode, device="meta")
                fast.weight, fast.bias = conv.weight, conv.bias
                setattr(parent, name, fast)
    return net
