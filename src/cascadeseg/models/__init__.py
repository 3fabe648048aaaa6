"""Networks: shared blocks, the two-stage cascade (3D), CU-Net (2D), U-Net baselines, registry."""
