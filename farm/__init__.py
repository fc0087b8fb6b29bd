"""povfarm: a render farm for POV-Ray.

The controller and the node use only the Python standard library; the viewer
adds pygame.
"""

__version__ = "0.1.0"
