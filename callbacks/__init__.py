"""Lightning callbacks: when, inside a Trainer, statistics are collected, channels scored, masked and slimmed."""
from callbacks.channel_scores import ChannelScoring, StatisticsSettings

__all__ = ["ChannelScoring", "StatisticsSettings"]
