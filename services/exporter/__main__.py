"""Run the exporter service: python -m services.exporter --backend local [--bind ...]."""

from protocol.runner import service_main
from services.exporter.service import build_service

if __name__ == "__main__":
    service_main("exporter", build_service)
