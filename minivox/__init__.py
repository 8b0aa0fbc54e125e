"""minivox: a compact, read-along PyTorch implementation of a real-time voice agent.

`import minivox` is cheap: it imports no numba, websockets or CUDA code. Submodules are
imported where they are used (`from minivox import audio`).
"""

__version__ = "0.1.0"
