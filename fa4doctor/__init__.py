"""fa4doctor: does FlashAttention-4 really work on this GPU node, correctly and fast?"""

__version__ = "0.1.0"
