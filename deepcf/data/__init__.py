"""Ratings data: readers, the RatingMatrix and its split, the synthetic generator, the DataModule."""
