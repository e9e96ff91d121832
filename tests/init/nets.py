"""Small nets and image-like batches for the init tests."""
import numpy as np

from caffeinit.api import load
from caffeinit.prototxt import parse_net_text

HEAD = ('name: "{name}"\nlayer {{ name: "data" type: "Input" top: "data" '
        'input_param {{ shape {{ dim: 8 dim: 3 dim: 12 dim: 12 }} }} }}\n')


def conv(name, bottom, n, k=3, group=1, extra=""):
    return (f'layer {{ name: "{name}" type: "Convolution" bottom: "{bottom}" top: "{name}" {extra}'
            f'convolution_param {{ num_output: {n} kernel_size: {k} pad: {k // 2} group: {group} '
            f'weight_filler {{ type: "gaussian" std: 0.01 }} }} }}\n')


def ip(name, bottom, n, extra=""):
    return (f'layer {{ name: "{name}" type: "InnerProduct" bottom: "{bottom}" top: "{name}" {extra}'
            f'inner_product_param {{ num_output: {n} weight_filler {{ type: "gaussian" std: 0.01 }} }} }}\n')


def layer(name, type_, bottoms, top=None, extra=""):
    bottoms = [bottoms] if isinstance(bottoms, str) else bottoms
    text = f'layer {{ name: "{name}" type: "{type_}" '
    text += "".join(f'bottom: "{b}" ' for b in bottoms)
    return text + f'top: "{top or name}" {extra}}}\n'


def relu(name, blob):
    return layer(name, "ReLU", blob, blob)


def pool(name, bottom):
    return layer(name, "Pooling", bottom, extra="pooling_param { pool: MAX kernel_size: 2 stride: 2 } ")


# conv (grouped) -> fc on a 4-D blob: every method has enough patches for every layer with 64 images
PLAIN = (HEAD.format(name="plain") + conv("conv1", "data", 8) + relu("relu1", "conv1") + pool("pool1", "conv1")
         + conv("conv2", "pool1", 12, group=2) + relu("relu2", "conv2") + pool("pool2", "conv2")
         + ip("fc1", "pool2", 16) + relu("relu3", "fc1") + ip("fc2", "fc1", 5)
         + layer("prob", "Softmax", "fc2"))

# DAG: a residual Eltwise and a Concat of two branches
DAG = (HEAD.format(name="dag") + conv("conv1", "data", 8) + relu("relu1", "conv1")
       + conv("a", "conv1", 8) + relu("relu_a", "a") + conv("b", "a", 8)
       + layer("sum", "Eltwise", ["conv1", "b"]) + relu("relu_s", "sum")
       + conv("left", "sum", 6, k=1) + conv("right", "sum", 6) + layer("cat", "Concat", ["left", "right"])
       + relu("relu_c", "cat") + ip("fc", "cat", 5))

# BatchNorm + Scale, PReLU, LRN, Sigmoid
MIXED = (HEAD.format(name="mixed") + conv("conv1", "data", 8) + layer("bn1", "BatchNorm", "conv1", "conv1")
         + layer("sc1", "Scale", "conv1", "conv1", 'scale_param { bias_term: true } ')
         + layer("prelu1", "PReLU", "conv1", "conv1")
         + layer("norm1", "LRN", "conv1", extra="lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 } ")
         + conv("conv2", "norm1", 8) + layer("sig", "Sigmoid", "conv2", "conv2") + ip("fc", "conv2", 5))

# conv2 frozen (lr_mult 0, a fixed nonzero bias) and two layers sharing one weight
FROZEN_SHARED = (HEAD.format(name="frozen_shared") + conv("conv1", "data", 8) + relu("relu1", "conv1")
                 + conv("conv2", "conv1", 8, extra='param { lr_mult: 0 } param { lr_mult: 0 } ')
                 .replace("weight_filler", 'bias_filler { type: "constant" value: 0.2 } weight_filler')
                 + relu("relu2", "conv2")
                 + conv("s1", "conv2", 8, extra='param { name: "shared_w" } ')
                 + relu("relu3", "s1")
                 + conv("s2", "s1", 8, extra='param { name: "shared_w" } ')
                 + relu("relu4", "s2") + ip("fc", "s2", 5))


def model(text, weights=None, **kwargs):
    return load(parse_net_text(text), weights, **kwargs)


def images(n_batches, batch=8, seed=0, size=12):
    """Smooth, correlated, image-like batches (so patches have structure for pca/zca/kmeans)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_batches):
        x = rng.standard_normal((batch, 3, size + 4, size + 4))
        x = (x[:, :, :-4] + x[:, :, 1:-3] + x[:, :, 2:-2] + x[:, :, 3:-1])
        x = (x[:, :, :, :-4] + x[:, :, :, 1:-3] + x[:, :, :, 2:-2] + x[:, :, :, 3:-1]) / 4
        x = x + rng.standard_normal((batch, 3, 1, 1))  # per-image colour offset
        out.append({"data": x.astype(np.float32)})
    return out
