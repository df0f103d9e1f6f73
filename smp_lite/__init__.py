"""smp-lite: self-supervised motion perception (SMP) and playback-rate perception (PRP)."""

__version__ = "0.1.0"
