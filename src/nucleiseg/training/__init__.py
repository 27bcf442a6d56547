"""Training engine: data split and crops, the loop, checkpoints and run folders."""

from nucleiseg.training.checkpoint import file_hash, load_weights, save_weights
from nucleiseg.training.data import split_ids
from nucleiseg.training.trainer import train

__all__ = ["file_hash", "load_weights", "save_weights", "split_ids", "train"]
