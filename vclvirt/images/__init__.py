"""Master images: where they are on a host, and how they get there."""
