"""Settings from the environment and the host inventory file."""
