"""clip-relay: a webhook relay for the ScaleReach video-clipping API."""

__version__ = "0.1.0"
