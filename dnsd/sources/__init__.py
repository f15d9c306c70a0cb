"""Writers of the record store, each on its own: static (config records and hosts files),
docker (the Engine's containers), etcd (the SkyDNS-format mirror) and etcd_publish (this node's
containers written to etcd).  ``lifecycle`` holds what they share: health, backoff, threads."""
