"""Run the reader service: `python -m services.reader --backend zarr --bind tcp://127.0.0.1:5551`."""

from protocol.runner import service_main
from services.reader.service import build_service

if __name__ == "__main__":
    service_main("reader", build_service)
