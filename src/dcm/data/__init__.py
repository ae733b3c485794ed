"""The data every stage learns from or is scored on: seed splits, prompt sources, teacher trajectories."""
