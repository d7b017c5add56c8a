"""Lightning callbacks: when, inside a Trainer, statistics are collected, channels scored, masked and slimmed."""
from infoprune.callbacks.calibration import StatisticsSettings
from infoprune.callbacks.cep import ConnectionPruning
from infoprune.callbacks.channel_scores import ChannelScoring
from infoprune.callbacks.distillation import KnowledgeDistillation
from infoprune.callbacks.masking import ChannelMasking, save_weights_checkpoint
from infoprune.callbacks.pruning import ChannelPruning, load_slimmed

__all__ = ["ChannelMasking", "ChannelPruning", "ChannelScoring", "ConnectionPruning", "KnowledgeDistillation",
           "StatisticsSettings", "load_slimmed", "save_weights_checkpoint"]
