"""Contrastive losses, one small module each: InfoNCE (MoCo/PCL instance term), ProtoNCE, NT-Xent (SimCLR),
semi-supervised SupCon, and the CLOP prototype term."""
from .clop import CLOPLoss
from .infonce import InfoNCE
from .ntxent import NTXent
from .protonce import ProtoNCE
from .supcon import SemiSupCon

__all__ = ["CLOPLoss", "InfoNCE", "NTXent", "ProtoNCE", "SemiSupCon"]
