"""Run the sam service: `python -m services.sam --backend classical --bind tcp://127.0.0.1:5552`."""

from protocol.runner import service_main
from services.sam.service import build_service

if __name__ == "__main__":
    service_main("sam", build_service)
