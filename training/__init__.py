"""Builds DiScoFormer's pretrained weights from random Gaussian mixtures (``python -m training``)."""
