"""Writers of the record store: static (config + hosts files); docker and etcd follow."""
