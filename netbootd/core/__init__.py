"""The boot-decision core. Edges import `BootCore` from here."""

from netbootd.core.decide import BootCore, Decision, Denied, NoScript

__all__ = ["BootCore", "Decision", "Denied", "NoScript"]
