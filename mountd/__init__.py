"""mountd: an ML artifact repository (a local tier plus object-store remotes) as one POSIX directory."""

__version__ = "0.1.0"
