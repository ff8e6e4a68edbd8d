"""Apache VCL integration: the HTTP routes vcld's provisioning module needs, and the
inventory read from VCL's database (`vclvirt inventory from-vcl`)."""
