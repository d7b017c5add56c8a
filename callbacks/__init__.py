"""Lightning callbacks: when, inside a Trainer, statistics are collected, channels scored, masked and slimmed."""
from callbacks.channel_scores import ChannelScoring, StatisticsSettings
from callbacks.masking import ChannelMasking, export_network, save_weights_checkpoint, slim_classifier

__all__ = ["ChannelMasking", "ChannelScoring", "StatisticsSettings", "export_network", "save_weights_checkpoint",
           "slim_classifier"]
