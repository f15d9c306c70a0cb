# dnsd container image.
#   docker build -t dnsd .                       (public base, dependencies from PyPI)
#   scripts/build-image --tag dnsd               (no registry: makes local/python:3.11 with
#       debootstrap, fills wheels/ on the host, then docker build --network none
#       --build-arg BASE=local/python:3.11 --build-arg PIP_EXTRA=--no-index)
# Run (non-root; Docker Engine 20.10+ lets an unprivileged process bind :53 in the container's
# network namespace; the Docker socket is root-equivalent: mount it read-only and add its group):
#   docker run -d --name dnsd \
#     -v /var/run/docker.sock:/var/run/docker.sock:ro \
#     --group-add "$(stat -c %g /var/run/docker.sock)" dnsd
ARG BASE=python:3.11-slim

FROM ${BASE} AS build
ARG PIP_EXTRA=""
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore
RUN python3 -m venv /opt/dnsd
COPY wheels/ /wheels/
# Dependencies first (this layer is reused until pyproject.toml or the version changes) ...
COPY pyproject.toml README.md /src/
COPY dnsd/__init__.py /src/dnsd/__init__.py
RUN /opt/dnsd/bin/pip install ${PIP_EXTRA} --find-links /wheels /src
# ... then the code.
COPY dnsd/ /src/dnsd/
RUN /opt/dnsd/bin/pip install ${PIP_EXTRA} --find-links /wheels --no-deps --force-reinstall /src \
 && /opt/dnsd/bin/dnsd version

FROM ${BASE}
COPY --from=build /opt/dnsd /opt/dnsd
COPY conf/container.toml /etc/dnsd/dnsd.toml
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
USER 10053:10053
EXPOSE 53/udp 53/tcp 9153/tcp
# Healthy means dnsd answers DNS on its port (any reply), not only that the process runs.
HEALTHCHECK --interval=5s --timeout=3s --start-period=5s --retries=3 \
  CMD ["/opt/dnsd/bin/python", "-m", "dnsd.healthcheck", "127.0.0.1:53"]
# Exec form: dnsd is PID 1 and gets docker stop's SIGTERM directly (it exits within 1 s).
ENTRYPOINT ["/opt/dnsd/bin/dnsd", "serve", "--config", "/etc/dnsd/dnsd.toml"]
