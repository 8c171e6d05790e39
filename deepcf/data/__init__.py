"""Ratings data: readers, RatingMatrix and its split, the synthetic generator, the DataModule."""
