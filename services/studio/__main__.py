"""Run the studio: `python -m services.studio --config configs/services.yaml`.

Usage:
    python -m services.studio --config configs/services.yaml
    python -m services.studio --bind tcp://127.0.0.1:0 --backend http --option http=127.0.0.1:0 \
        --option buffer=data/demo/demo.zarr --option pipeline=configs/pipelines/rgbm_demo.yaml \
        --option output=out/studio
"""

from protocol.runner import service_main
from services.studio.service import build_service

if __name__ == "__main__":
    service_main("studio", build_service)
