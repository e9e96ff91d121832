"""Write the small natural-image set under models/images/ (JPEGs + list.txt) from photos scikit-image ships.

Nothing is downloaded: skimage.data's bundled photos are cropped at fixed boxes and resized to 256x256 with OpenCV
(INTER_AREA), then written as BGR JPEGs (quality 90). list.txt is a Caffe ImageData list: ``file label`` with the
photo's index as label. Run: python tools/make_sample_images.py [--out models/images]
"""
from __future__ import annotations

import argparse
import os

import cv2
import numpy as np

# photo -> crop boxes as fractions (top, left, height, width) of the photo
CROPS = {
    "astronaut": [(0.0, 0.0, 1.0, 1.0), (0.05, 0.25, 0.5, 0.5), (0.4, 0.0, 0.6, 0.6), (0.3, 0.45, 0.7, 0.55)],
    "coffee": [(0.0, 0.15, 1.0, 0.7), (0.1, 0.3, 0.6, 0.4), (0.3, 0.0, 0.7, 0.5), (0.0, 0.5, 0.8, 0.5)],
    "chelsea": [(0.0, 0.15, 1.0, 0.7), (0.05, 0.3, 0.6, 0.45), (0.3, 0.1, 0.7, 0.5), (0.2, 0.5, 0.8, 0.5)],
    "rocket": [(0.0, 0.2, 1.0, 0.66), (0.0, 0.35, 0.55, 0.35), (0.4, 0.0, 0.6, 0.45), (0.3, 0.55, 0.7, 0.45)],
    "hubble_deep_field": [(0.0, 0.0, 0.5, 0.5), (0.5, 0.5, 0.5, 0.5), (0.2, 0.3, 0.6, 0.6)],
    "immunohistochemistry": [(0.0, 0.0, 0.6, 0.6), (0.4, 0.4, 0.6, 0.6)],
    "retina": [(0.1, 0.1, 0.8, 0.8), (0.3, 0.2, 0.4, 0.4), (0.45, 0.5, 0.4, 0.4)],
    "camera": [(0.0, 0.0, 1.0, 1.0), (0.1, 0.2, 0.6, 0.6)],
    "coins": [(0.0, 0.1, 1.0, 0.8)],
    "clock": [(0.0, 0.1, 1.0, 0.75)],
}
SIZE = 256


def crops(name: str):
    """The 256x256 BGR crops of one skimage photo."""
    import skimage.data
    photo = getattr(skimage.data, name)()
    if photo.ndim == 2:
        photo = np.stack([photo] * 3, axis=-1)
    bgr = cv2.cvtColor(np.ascontiguousarray(photo[..., :3]), cv2.COLOR_RGB2BGR)
    height, width = bgr.shape[:2]
    for top, left, h, w in CROPS[name]:
        y, x = int(top * height), int(left * width)
        box = bgr[y:y + max(1, int(h * height)), x:x + max(1, int(w * width))]
        yield cv2.resize(box, (SIZE, SIZE), interpolation=cv2.INTER_AREA)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "models", "images"))
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    lines = []
    for label, name in enumerate(CROPS):
        for k, image in enumerate(crops(name)):
            file_name = f"{name}_{k}.jpg"
            cv2.imwrite(os.path.join(args.out, file_name), image, [cv2.IMWRITE_JPEG_QUALITY, 90])
            lines.append(f"{file_name} {label}")
    with open(os.path.join(args.out, "list.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
