"""Krita plugin: points from vector shapes, mask from the selection, results as layers."""
