"""SoundCLR models: backbones by name, heads, and the checkpoint format."""
