"""Each source built from the settings, one factory per source (as CoreDNS's ``setup.go``):
the one place that turns ``Config`` sections into the small settings objects the sources
take, so no source imports the config.  ``build_sources`` gives the daemon every source in
start order; the daemon runs, checks, stops and joins them alike (``sources.lifecycle``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dnsd.config import Config
from dnsd.records import RecordStore
from dnsd.sources.docker import DockerSource
from dnsd.sources.docker_engine import DockerSettings
from dnsd.sources.docker_names import DockerNaming
from dnsd.sources.etcd import EtcdSource
from dnsd.sources.etcd_client import make_client
from dnsd.sources.etcd_publish import Publisher, PublishSettings
from dnsd.sources.lifecycle import ABSENT, Source
from dnsd.sources.static import StaticSettings, StaticSource
from dnsd.stats import Stats


@dataclass
class Sources:
    """Every source the settings turn on, by name, and all of them in start order."""

    static: StaticSource
    docker: DockerSource | None = None
    etcd: EtcdSource | None = None
    publisher: Publisher | None = None
    all: list[Source] = field(default_factory=list)


def static_settings(config: Config) -> StaticSettings:
    static = config.static
    return StaticSettings(
        list(config.server.zones), config.server.ttl, static.records, static.hosts,
        static.watch_interval, static.outside_zones, static.max_hosts_bytes, config.path,
    )  # fmt: skip


def build_static(
    config: Config, store: RecordStore, stats: Stats, load_config: Callable[[], Config]
) -> StaticSource:
    """``load_config`` re-reads the settings on a reload (SIGHUP, a watched file)."""
    return StaticSource(
        store, lambda: static_settings(load_config()), static_settings(config), stats
    )


def build_docker(config: Config, store: RecordStore, stats: Stats) -> DockerSource | None:
    docker = config.docker
    if not docker.enabled:
        return None
    naming = DockerNaming(docker.zone, config.server.ttl, docker.serve_starting, docker.image_names)
    connection = DockerSettings(
        docker.url, docker.tls_ca, docker.tls_cert, docker.tls_key, docker.resync_interval
    )
    return DockerSource(store, naming, connection, stats)


def build_etcd(
    config: Config, store: RecordStore, stats: Stats, docker: DockerSource | None
) -> tuple[EtcdSource | None, Publisher | None]:
    """The mirror, and the publisher of this node's containers when Docker is on."""
    etcd, server = config.etcd, config.server
    if not etcd.enabled:
        return None, None
    connection = etcd.connection()

    def client() -> Any:
        return make_client(connection)

    mirror = EtcdSource(store, client, etcd.prefix, server.zones, server.ttl, stats)
    if not etcd.publish or docker is None:
        return mirror, None
    publish = PublishSettings(etcd.node_id, etcd.lease_ttl, etcd.advertise, etcd.advertise_ip)
    publisher = Publisher(client, etcd.prefix, publish, stats)
    docker.subscribers.append(publisher.update)
    return mirror, publisher


def build_sources(
    config: Config, store: RecordStore, stats: Stats, load_config: Callable[[], Config]
) -> Sources:
    static = build_static(config, store, stats, load_config)
    docker = build_docker(config, store, stats)
    etcd, publisher = build_etcd(config, store, stats, docker)
    ordered: list[Source] = [s for s in (static, docker, etcd, publisher) if s is not None]
    return Sources(static, docker, etcd, publisher, ordered)


def first_loads(
    docker: DockerSource | None, docker_zone: str, etcd: EtcdSource | None
) -> Callable[[str], bool]:
    """``loading(zone)`` for the local zone: whether the zone may still lack names, a source
    that fills it (Docker its zone, etcd every zone) not having applied its first full load
    and not being absent.  Once none is waiting, never again (later outages serve what was
    loaded; a Docker absent then and started later is not waited for)."""
    holders: list[tuple[Source, str | None]] = []  # None: every zone
    if docker is not None:
        holders.append((docker, docker_zone))
    if etcd is not None:
        holders.append((etcd, None))
    loaded = not holders

    def loading(zone: str) -> bool:
        nonlocal loaded
        if loaded:
            return False
        waiting = [
            fills
            for source, fills in holders
            if not (health := source.health()).synced and health.state != ABSENT
        ]
        loaded = not waiting
        return any(fills is None or fills == zone for fills in waiting)

    return loading
