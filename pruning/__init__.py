"""Pure-torch pruning: statistics, scores, selection, masks, slimming. No Lightning import: usable alone."""
