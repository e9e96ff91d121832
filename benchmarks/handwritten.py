"""Hand-written torch versions of the benchmark nets (no Caffe machinery), the yardstick for caffeinit's speed.

``HandCaffeNet`` lives in forward.py (the forward benchmark's GPU comparison) and is re-exported here;
``HandVGG16`` is VGG-16 as in the corpus deploy net (soeaver__deploy_vgg16-pytorch.prototxt). Both take their
weights from a caffeinit model with ``from_model`` and return softmax probabilities; ``logits`` stops before the
softmax (where the initialization injects its gradients).
"""
import os
import sys

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from forward import HandCaffeNet  # noqa: E402

VGG16_CONVS = [("conv1_1", 3, 64), ("conv1_2", 64, 64), None,
               ("conv2_1", 64, 128), ("conv2_2", 128, 128), None,
               ("conv3_1", 128, 256), ("conv3_2", 256, 256), ("conv3_3", 256, 256), None,
               ("conv4_1", 256, 512), ("conv4_2", 512, 512), ("conv4_3", 512, 512), None,
               ("conv5_1", 512, 512), ("conv5_2", 512, 512), ("conv5_3", 512, 512), None]  # None: 2x2 max pool
VGG16_FCS = [("fc6", 512 * 7 * 7, 4096), ("fc7", 4096, 4096), ("classifier", 4096, 1000)]


class HandVGG16(nn.Module):
    """VGG-16 (13 3x3 convolutions with ReLU, 5 max pools, 3 fully connected layers) for 224x224 inputs."""

    def __init__(self):
        super().__init__()
        layers = []
        for spec in VGG16_CONVS:
            if spec is None:
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(spec[1], spec[2], 3, padding=1), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        fc6, fc7, classifier = (nn.Linear(n_in, n_out) for _, n_in, n_out in VGG16_FCS)
        self.classifier = nn.Sequential(nn.Flatten(), fc6, nn.ReLU(), fc7, nn.ReLU(), classifier)

    def logits(self, x):
        return self.classifier(self.features(x))

    def forward(self, x):
        return torch.softmax(self.logits(x), dim=1)

    @classmethod
    def from_model(cls, model):
        """The same weights as a caffeinit VGG-16 model (layer names of the corpus deploy net)."""
        hand = cls()
        blobs = model.blobs()
        layers = [m for m in list(hand.features) + list(hand.classifier) if isinstance(m, (nn.Conv2d, nn.Linear))]
        names = [spec[0] for spec in VGG16_CONVS if spec is not None] + [name for name, _, _ in VGG16_FCS]
        for module, name in zip(layers, names, strict=True):
            weight, bias = blobs[name]
            module.weight.data.copy_(torch.from_numpy(weight).reshape(module.weight.shape))
            module.bias.data.copy_(torch.from_numpy(bias))
        return hand.eval()


def hand_logits(hand, x):
    """The net's values before the final softmax (HandCaffeNet has no ``logits`` method)."""
    if isinstance(hand, HandCaffeNet):
        return hand.classifier(hand.features(x))
    return hand.logits(x)


HAND_NETS = {"caffenet": HandCaffeNet, "vgg16": HandVGG16}
