"""cascadeseg: cascaded U-Nets for brain tumour segmentation in multi-modal MRI.

Two methods are implemented: the two-stage cascaded U-Net (3D; Jiang et al., 1st place BraTS 2019)
and CU-Net with loss weighted sampling (2D; Liu et al., BraTS 2017), plus U-Net baselines.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
