"""Exporter service: turns per-episode masks into the files users feed their next tool.

Usage:
    python -m services.exporter --config configs/services.yaml
"""

__version__ = "0.1.0"
