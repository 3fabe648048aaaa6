"""Losses: region soft Dice, loss-weighted-sampling cross-entropy, deep supervision."""
