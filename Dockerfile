# One image for the worker (needs the host's libvirt socket) and Flower.
FROM python:3.11-slim-bookworm
RUN apt-get update \
 && apt-get install -y --no-install-recommends libvirt-dev pkg-config gcc qemu-utils \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY tasks tasks
COPY workers workers
RUN pip install --no-cache-dir '.[worker,flower]'
ENTRYPOINT ["virt-revert"]
