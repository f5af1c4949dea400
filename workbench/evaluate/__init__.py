"""Scores and pictures of a trained model: metric names, toy scores, FID, sample export."""
