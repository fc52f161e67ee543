"""Figures and summaries: training curves, overlays, Dice by pothole size. May import:
inference (normalisation, post-processing), errors.
"""
