"""The studio: prompt, check, correct and approve masks in the browser (a mesh service + HTTP).

Usage: python -m services.studio --config configs/services.yaml   (then open the printed URL)
"""

__version__ = "0.1.0"
