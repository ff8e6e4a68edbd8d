# vclvirt image: the worker, the HTTP API and Flower all run from it.
#   docker build -t vclvirt .     (docker compose build does the same)
# Two stages so the compiler and headers stay out of the image that runs.

# ---- build: wheels for vclvirt and its dependencies ------------------------
FROM python:3.11-slim-bookworm AS build
# libvirt-python has no wheels on PyPI: it compiles against libvirt-dev, found
# through pkg-config, with gcc.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libvirt-dev pkg-config gcc \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Only what the package needs (see .dockerignore), so edits to tests or docs
# do not invalidate the cached wheels.
COPY pyproject.toml ./
COPY vclvirt ./vclvirt
RUN pip wheel --no-cache-dir --wheel-dir /wheels . flower

# ---- runtime --------------------------------------------------------------
FROM python:3.11-slim-bookworm
# libvirt0: the client library libvirt-python links (its qemu+libssh transport
# reaches the hosts); openssh-client: ssh/scp for diagnostics; qemu-utils:
# qemu-img for image work done on the worker itself.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libvirt0 openssh-client qemu-utils \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links=/wheels vclvirt flower \
 && rm -rf /wheels
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# The process needs no root in the container: workers reach the hosts over SSH
# as the inventory's user. Fixed uid so the host's key files can be chowned to it.
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/vclvirt vclvirt
USER vclvirt
WORKDIR /home/vclvirt
# No ENTRYPOINT: docker-compose.yml gives each service its full command.
CMD ["vclvirt", "--help"]
