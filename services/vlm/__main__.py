"""Start the vlm service: `python -m services.vlm --backend prompts --option prompts_file=FILE`.

Usage:
    python -m services.vlm --config configs/services.yaml
    python -m services.vlm --bind tcp://127.0.0.1:5553 --backend openai \
        --option base_url=http://127.0.0.1:8000/v1 --option concurrency=16
"""

from protocol.runner import service_main
from services.vlm.service import build_service

if __name__ == "__main__":
    service_main("vlm", build_service)
