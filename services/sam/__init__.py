"""The sam service: promptable video segmentation sessions (classical, sam2, sam3 backends).

Usage: python -m services.sam --backend classical --bind tcp://127.0.0.1:5552
"""

__version__ = "0.1.0"
