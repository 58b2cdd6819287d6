"""Audio in: the capture ring buffer, microphone and file sources, device lookup, resampling."""
