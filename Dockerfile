# gatewayd in a container: the image of every gatewayd service of docker-compose.yml
# (`gatewayd run` and the `gatewayd echo` backends).  Build: docker build -t gatewayd .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# nft(8): node-local mode (`run --tproxy`, deploy/node-local) applies its nftables ruleset
# with it; policy routing goes over netlink from Python, so iproute2 is not needed.
RUN apt-get update \
    && apt-get install -y --no-install-recommends nftables \
    && rm -rf /var/lib/apt/lists/*

# Only what `pip install .` needs (see .dockerignore); every dependency ships wheels for
# CPython 3.11 on x86_64 and aarch64, so no compiler is installed.
# constraints.txt pins every runtime dependency (`make constraints` regenerates it; the
# tests run on the same pins, `make` installs with it too).
WORKDIR /build
COPY pyproject.toml README.md constraints.txt ./
COPY gatewayd ./gatewayd
RUN pip install -c constraints.txt . && rm -rf /build

# An unprivileged user: listener ports must be above 1023 (the demo uses 8080).
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/gatewayd \
        --shell /usr/sbin/nologin gatewayd \
    && mkdir -p /etc/gatewayd
USER 10001:10001
WORKDIR /home/gatewayd

# 8080 / 8443: the demo Gateway's HTTP and HTTPS listeners; 9901: the admin server
# (/ready, /status, metrics).
EXPOSE 8080 8443 9901

# /ready is 200 once the configuration is loaded and every listener is bound.  urllib,
# not curl (not in the slim image); no proxy from the environment for a loopback probe.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["python", "-c", "import urllib.request as u; u.build_opener(u.ProxyHandler({})).open('http://127.0.0.1:9901/ready', timeout=2)"]

ENTRYPOINT ["gatewayd"]
# The configuration is mounted at /etc/gatewayd.  The admin server and a Gateway without
# spec.addresses listen on every address of the container (--address-pool 0.0.0.0/32),
# so `docker run -p 8080:8080` reaches a listener on port 8080; a Gateway that names its
# spec.addresses keeps them.
CMD ["run", "--config", "/etc/gatewayd", "--admin-address", "0.0.0.0:9901", "--address-pool", "0.0.0.0/32"]
