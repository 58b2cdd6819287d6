"""Labels with a meaning of their own (kept free of heavy imports: the detector and the serving path read it)."""

BACKGROUND_LABEL = "background"  # a model's "none of the other classes" (soundwatch adapt): scored, never an event
