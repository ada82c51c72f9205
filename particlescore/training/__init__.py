"""Builds DiScoFormer's pretrained weights from random Gaussian mixtures
(``python -m particlescore.training``; the commands behind the shipped files are in ``training/README.md``)."""
