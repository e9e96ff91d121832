"""Data input exactly as Caffe feeds it: image lists, folders, globs, LMDB/LevelDB, HDF5, DummyData and
Caffe's DataTransformer (``transform_param``). Decoding and resizing use OpenCV, as Caffe does."""
from caffeinit.data.images import IMAGE_EXTENSIONS, decode_image, read_image
from caffeinit.data.loader import batches
from caffeinit.data.sources import (DatumDBSource, DummySource, HDF5Source, ImageEntry, ImageSource, Source,
                                    find_images, layer_source, parse_image_list, peek_top_shapes)
from caffeinit.data.transform import DEPLOY_MEAN, Preprocess, read_mean_file

__all__ = ["IMAGE_EXTENSIONS", "DEPLOY_MEAN", "DatumDBSource", "DummySource", "HDF5Source", "ImageEntry",
           "ImageSource", "Preprocess", "Source", "batches", "decode_image", "find_images", "layer_source",
           "parse_image_list", "peek_top_shapes", "read_image", "read_mean_file"]
