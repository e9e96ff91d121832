import pytest
import torch
import torch.nn.functional as F

from caffeinit.init.roles import affine_of
from tests.init.nets import model


CONV = """
input: "data" input_shape {{ dim: 3 dim: 4 dim: 23 dim: 19 }}
layer {{ name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param {{ num_output: 4 group: {group} kernel_h: {kh} kernel_w: {kw} stride_h: {sh} stride_w: {sw}
                      pad_h: {ph} pad_w: {pw} dilation: {d} }} }}
"""


@pytest.mark.parametrize("geometry", [dict(group=1, kh=11, kw=11, sh=4, sw=4, ph=0, pw=0, d=1),
                                      dict(group=2, kh=3, kw=2, sh=2, sw=1, ph=1, pw=2, d=2),
                                      dict(group=2, kh=5, kw=5, sh=1, sw=1, ph=2, pw=2, d=1)])
def test_selected_patch_rows_equal_the_unfolded_rows(geometry):
    node = model(CONV.format(**geometry)).net.layer("conv")
    affine = affine_of(node)
    x = torch.randn(3, 4, 23, 19)
    per = 4 // geometry["group"]
    extent = (geometry["kh"], geometry["kw"])
    for group in range(geometry["group"]):
        # the oracle: torch's unfold, rows ordered (image, y, x), columns (channel, ky, kx) like the weight
        cols = F.unfold(x[:, group * per:(group + 1) * per], extent, dilation=geometry["d"],
                        padding=(geometry["ph"], geometry["pw"]), stride=(geometry["sh"], geometry["sw"]))
        oracle = cols.transpose(1, 2).reshape(-1, cols.shape[1])
        assert affine.patch_count(x) == oracle.shape[0]
        rows = torch.randperm(oracle.shape[0], generator=torch.Generator().manual_seed(group))[:40]
        assert torch.equal(affine.patches(x, rows)[group], oracle[rows])
        assert torch.equal(affine.patches(x)[group], oracle)


@pytest.mark.parametrize("geometry", [dict(group=2, kh=3, kw=2, sh=2, sw=1, ph=1, pw=2, d=2),
                                      # windows past the padded input (25 > 23, 21 > 19 by less than the stride):
                                      # Caffe's one output per axis reads zeros beyond the end
                                      dict(group=1, kh=25, kw=21, sh=4, sw=3, ph=0, pw=0, d=1),
                                      dict(group=2, kh=13, kw=5, sh=4, sw=5, ph=1, pw=0, d=2)])
def test_patches_times_the_weight_give_the_layers_output(geometry):
    """The patch rows are what the layer multiplies with its weight: patches @ W_g^T is the group's output, in
    (image, y, x) order, for every geometry the layer accepts."""
    m = model(CONV.format(**geometry))
    node = m.net.layer("conv")
    affine = affine_of(node)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 23, 19, generator=gen)
    weight = torch.randn(node.layer.blob_shapes[0], generator=gen)
    out = node.layer.forward([x], [weight, torch.zeros(4)])[0]
    rows = out.permute(0, 2, 3, 1).reshape(-1, 4)
    assert affine.patch_count(x) == rows.shape[0]
    groups, per = geometry["group"], 4 // geometry["group"]
    patches = affine.patches(x)
    chosen = torch.arange(rows.shape[0]).flip(0)
    for group in range(groups):
        w = weight[group * per:(group + 1) * per].reshape(per, -1)
        expected = rows[:, group * per:(group + 1) * per]  # sums of up to 2,100 products of ~1: float32 rounding
        torch.testing.assert_close(patches[group] @ w.t(), expected, rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(affine.patches(x, chosen)[group] @ w.t(), expected[chosen], rtol=1e-5, atol=1e-4)


IP = """
input: "data" input_shape {{ dim: 2 dim: 3 dim: 4 dim: 5 }}
layer {{ name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
  inner_product_param {{ num_output: 6 axis: {axis} }} }}
"""


@pytest.mark.parametrize("axis", [1, 2, 3])
def test_inner_product_patches_are_the_rows_its_weight_multiplies(axis):
    """An InnerProduct over axes [axis:] has one patch per position of the axes before it (2, 6 or 24 here), each
    row in the weight's element order: patches @ W^T is the layer's output."""
    m = model(IP.format(axis=axis))
    node = m.net.layer("ip")
    affine = affine_of(node)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4, 5, generator=gen)
    weight = torch.randn(node.layer.blob_shapes[0], generator=gen)
    out = node.layer.forward([x], [weight, torch.zeros(6)])[0]
    rows = out.reshape(-1, 6)
    assert affine.patch_count(x) == rows.shape[0] == x.numel() // weight.shape[1]
    torch.testing.assert_close(affine.patches(x)[0] @ weight.t(), rows, rtol=1e-5, atol=1e-5)
    chosen = torch.arange(rows.shape[0]).flip(0)
    torch.testing.assert_close(affine.patches(x, chosen)[0] @ weight.t(), rows[chosen], rtol=1e-5, atol=1e-5)


SCALED = """
input: "data" input_shape { dim: 2 dim: 4 dim: 6 dim: 6 }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 6 group: 2 kernel_size: 3 } }
layer { name: "deconv" type: "Deconvolution" bottom: "conv" top: "deconv"
  convolution_param { num_output: 4 group: 2 kernel_size: 2 } }
layer { name: "ip" type: "InnerProduct" bottom: "deconv" top: "ip" inner_product_param { num_output: 5 } }
layer { name: "ipt" type: "InnerProduct" bottom: "ip" top: "ipt"
  inner_product_param { num_output: 3 transpose: true } }
"""


@pytest.mark.parametrize("name", ["conv", "deconv", "ip", "ipt"])
def test_scaling_outputs_in_place_multiplies_each_output_channels_weights(name):
    """Output channel c of the layer's top gets factor c: checked through the layer's own forward (no bias)."""
    m = model(SCALED)
    node = m.net.layer(name)
    affine = affine_of(node)
    weight = m.module.layer_blobs[node.index][0].data
    bottom = torch.randn((2,) + tuple(node.bottom_shapes[0][1:]))
    blobs = [weight] + [torch.zeros_like(b) for b in m.module.layer_blobs[node.index][1:]]
    before = node.layer.forward([bottom], blobs)[0]
    factors = torch.arange(1, affine.num_output + 1, dtype=torch.float32)
    copy = affine.scale_outputs(weight.clone(), factors)
    affine.scale_outputs_(weight, factors)
    assert torch.equal(weight, copy)
    shape = [1] * before.dim()
    shape[affine.channel_axis] = -1
    torch.testing.assert_close(node.layer.forward([bottom], blobs)[0], before * factors.reshape(shape))
