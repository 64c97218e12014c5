"""mmrep: structural re-parameterization for OpenMMLab detection and segmentation."""
from .reparam import reparameterize_model
from .version import __version__

__all__ = ['reparameterize_model', '__version__']
