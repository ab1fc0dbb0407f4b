"""Fashion-MNIST for bnlab: find it, verify it, load it fast (see docs/data.md)."""

from .cache import DecodedCache, user_cache_dir
from .dataset import CLASSES, FashionMNIST
from .download import MIRRORS, DownloadConfig, download_file
from .errors import DatasetError
from .fashion_mnist import load_data_fashion_mnist
from .idx import encode_idx, gunzip, parse_idx
from .loader import TensorLoader
from .read import FileCheck, Split, check_files, read_split
from .sources import DataLocation, SearchPaths, locate
from .verify import FILES, TEST, TRAIN, FileSpec

__all__ = [
    "CLASSES",
    "FILES",
    "MIRRORS",
    "TEST",
    "TRAIN",
    "DataLocation",
    "DatasetError",
    "DecodedCache",
    "DownloadConfig",
    "FashionMNIST",
    "FileCheck",
    "FileSpec",
    "SearchPaths",
    "Split",
    "TensorLoader",
    "check_files",
    "download_file",
    "encode_idx",
    "gunzip",
    "load_data_fashion_mnist",
    "locate",
    "parse_idx",
    "read_split",
    "user_cache_dir",
]
