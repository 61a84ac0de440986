"""nnunet_ssl: semi-supervised trainers for nnU-Net v2 (a plugin, not a fork)."""
__version__ = "0.1.0"
