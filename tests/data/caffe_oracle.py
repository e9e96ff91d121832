"""A plain-loop numpy transcription of Caffe's DataTransformer::Transform (data_transformer.cpp lines 40-125),
written from the Caffe source as the oracle for caffeinit.data.transform."""
import numpy as np


def caffe_transform(datum, crop_size, h_off, w_off, do_mirror, scale=1.0, mean=None, mean_values=()):
    """``datum`` C x H x W; offsets and the mirror flag are given (Caffe draws them from its RNG)."""
    channels, datum_height, datum_width = datum.shape
    flat = datum.reshape(-1).astype(np.float32)
    height, width = (crop_size, crop_size) if crop_size else (datum_height, datum_width)
    mean_flat = None if mean is None else mean.reshape(-1).astype(np.float32)
    values = list(mean_values)
    if len(values) == 1:
        values = values * channels
    out = np.zeros(channels * height * width, np.float32)
    for c in range(channels):
        for h in range(height):
            for w in range(width):
                data_index = (c * datum_height + h_off + h) * datum_width + w_off + w
                if do_mirror:
                    top_index = (c * height + h) * width + (width - 1 - w)
                else:
                    top_index = (c * height + h) * width + w
                element = flat[data_index]
                if mean_flat is not None:
                    out[top_index] = (element - mean_flat[data_index]) * np.float32(scale)
                elif values:
                    out[top_index] = (element - np.float32(values[c])) * np.float32(scale)
                else:
                    out[top_index] = element * np.float32(scale)
    return out.reshape(channels, height, width)
