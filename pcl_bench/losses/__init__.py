"""Contrastive losses, one small module each: InfoNCE (MoCo/PCL instance term), ProtoNCE, NT-Xent (SimCLR)."""
from .infonce import InfoNCE
from .ntxent import NTXent
from .protonce import ProtoNCE

__all__ = ["InfoNCE", "NTXent", "ProtoNCE"]
