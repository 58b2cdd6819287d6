"""soundwatch: a real-time environmental-sound monitoring daemon (SoundCLR over ZeroMQ)."""

__version__ = "0.1.0"
