"""Differences between the versions of torch, mmengine and mmcv that mmrep supports.

(Safe checkpoint loading, which lived here, is :mod:`mmrep.checkpoint`.)
"""
