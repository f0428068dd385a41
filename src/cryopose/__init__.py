"""cryopose: the poses of cryo-EM particle images, in RELION's conventions."""

__version__ = "0.1.0"
