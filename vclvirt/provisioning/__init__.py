"""The work done on one hypervisor host, one module per concern, over a shared HostAccess:

- `access`: the host, how to reach it (transport, driver, libvirt), its files, settings;
- `node_status`: READY / POST_LOAD / RELOAD, the first step of a load;
- `cleanup`: removing a computer's domains, overlays and XML files;
- `load`: the load steps that build a domain (pre_define … post_load);
- `power`, `capture`, `snapshots`, `images` (image queries).

`host.Host` puts them side by side; an operation's steps (vclvirt.operations) call them.
"""
