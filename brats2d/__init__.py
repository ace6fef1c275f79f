"""brats2d: a fast, CPU-first, reproducible 2D U-Net pipeline for BraTS brain-tumour segmentation.

Not for clinical use.
"""

__version__ = "0.1.0"
