"""The guest side: reaching a loaded VM over SSH and the OS hooks run inside it."""
