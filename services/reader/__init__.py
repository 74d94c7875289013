"""The reader service: serve episodes of zarr replay buffers (diffusion_policy / UMI layout).

Usage: python -m services.reader --backend zarr --bind tcp://127.0.0.1:5551
In-process: ``from services.reader.reader import ReplayReader``.
"""

__version__ = "0.1.0"
